"""EventBridge-style push signatures (v2 RSA-SHA256, v1 HMAC-SHA1) made with a fresh key pair.

Everything here follows ``docs/eventbridge-signature.md``: the header names, the string-to-sign
(target URL, the signed headers in their fixed order, the raw body, optionally a trailing
newline) and both signature generations. The key pair and a self-signed X.509 certificate are
generated when a :class:`SigningKeys` is made; the certificate is served by the sandbox at
:data:`CERT_PATH` and named in ``x-eventbridge-signature-url``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

CERT_PATH = "/x509_public_certificate_sandbox.pem"


class SigningKeys:
    """A 2048-bit RSA key pair and its self-signed certificate (valid one year)."""

    def __init__(self) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eventbridge-sandbox")])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(self.private_key, hashes.SHA256())
        )
        self.certificate_pem = self.certificate.public_bytes(serialization.Encoding.PEM)

    def sign_v2(self, message: bytes) -> str:
        """Base64 RSA PKCS#1 v1.5 / SHA-256 signature of ``message``."""
        signature = self.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode()

    def wrap_secret(self, secret: bytes) -> str:
        """Base64 of ``secret`` "encrypted" with the private key (PKCS#1 v1.5 type 1 padding).

        The v1 receiver recovers it with the public key (``recover_data_from_signature``).
        """
        key_bytes = (self.private_key.key_size + 7) // 8
        block = b"\x00\x01" + b"\xff" * (key_bytes - len(secret) - 3) + b"\x00" + secret
        numbers = self.private_key.private_numbers()
        value = pow(int.from_bytes(block, "big"), numbers.d, numbers.public_numbers.n)
        return base64.b64encode(value.to_bytes(key_bytes, "big")).decode()


def string_to_sign(
    url: str, headers: dict[str, str], body: bytes, *, token_line: bool, trailing_newline: bool
) -> bytes:
    """The string-to-sign for ``headers`` (lower-case names) over ``body``.

    Order per the spec: timestamp, hash or signature method, version, certificate URL, then the
    token line when ``token_line`` and a token header is present; the body; ``\\n`` if
    ``trailing_newline``.
    """
    method = "x-eventbridge-hash-method"
    if method not in headers:
        method = "x-eventbridge-signature-method"
    names = [
        "x-eventbridge-signature-timestamp",
        method,
        "x-eventbridge-signature-version",
        "x-eventbridge-signature-url",
    ]
    if token_line and "x-eventbridge-signature-token" in headers:
        names.append("x-eventbridge-signature-token")
    text = url + "\n" + "".join(f"{name}: {headers[name]}\n" for name in names)
    return text.encode() + body + (b"\n" if trailing_newline else b"")


def signed_headers(
    keys: SigningKeys,
    *,
    url: str,
    cert_url: str,
    body: bytes,
    version: str = "v2",
    token: str | None = None,
    token_line: bool = True,
    trailing_newline: bool = True,
    timestamp_ms: int | None = None,
) -> dict[str, str]:
    """The ``x-eventbridge-*`` headers of one push of ``body`` to ``url``.

    ``version`` is ``"v2"`` or ``"v1"``; ``timestamp_ms`` defaults to now (ms since the epoch).
    """
    stamp = str(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
    headers = {"x-eventbridge-signature-timestamp": stamp}
    if version == "v2":
        headers["x-eventbridge-hash-method"] = "SHA256"
    else:
        headers["x-eventbridge-signature-method"] = "HMAC-SHA1"
    headers["x-eventbridge-signature-version"] = "1.0"
    headers["x-eventbridge-signature-url"] = cert_url
    if token is not None:
        headers["x-eventbridge-signature-token"] = token
    message = string_to_sign(
        url, headers, body, token_line=token_line, trailing_newline=trailing_newline
    )
    if version == "v2":
        headers["x-eventbridge-signature-v2"] = keys.sign_v2(message)
    else:
        secret = base64.b64encode(os.urandom(24))
        headers["x-eventbridge-signature-secret"] = keys.wrap_secret(secret)
        digest = hmac.new(secret, message, hashlib.sha1).digest()
        headers["x-eventbridge-signature"] = base64.b64encode(digest).decode()
    return headers
