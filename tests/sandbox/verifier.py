"""An EventBridge signature checker written for the tests, apart from the sandbox's signer.

It follows docs/eventbridge-signature.md literally and returns which string-to-sign form
matched, so tests can also check that the sandbox signs the form it was told to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def fetch_public_key(cert_url: str) -> rsa.RSAPublicKey:
    """The RSA key of the PEM certificate at ``cert_url``."""
    key = x509.load_pem_x509_certificate(httpx.get(cert_url).content).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def _candidates(url: str, headers: dict[str, str], body: bytes) -> dict[str, bytes]:
    method = "x-eventbridge-hash-method"
    if "x-eventbridge-signature-v2" not in headers:
        method = "x-eventbridge-signature-method"
    lines = [
        f"x-eventbridge-signature-timestamp: {headers['x-eventbridge-signature-timestamp']}\n",
        f"{method}: {headers[method]}\n",
        f"x-eventbridge-signature-version: {headers['x-eventbridge-signature-version']}\n",
        f"x-eventbridge-signature-url: {headers['x-eventbridge-signature-url']}\n",
    ]
    forms = {"plain": lines}
    if "x-eventbridge-signature-token" in headers:
        token_line = f"x-eventbridge-signature-token: {headers['x-eventbridge-signature-token']}\n"
        forms["token"] = [*lines, token_line]
    found = {}
    for name, form in forms.items():
        head = (url + "\n" + "".join(form)).encode() + body
        found[name] = head
        found[name + "+newline"] = head + b"\n"
    return found


def verify(url: str, headers: dict[str, str], body: bytes, key: rsa.RSAPublicKey) -> str:
    """The name of the string-to-sign form that verifies (``plain``, ``token``, ``+newline``).

    Raises AssertionError when none does.
    """
    headers = {k.lower(): v for k, v in headers.items()}
    for name, message in _candidates(url, headers, body).items():
        if "x-eventbridge-signature-v2" in headers:
            signature = base64.b64decode(headers["x-eventbridge-signature-v2"])
            try:
                key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            except InvalidSignature:
                continue
            return name
        wrapped = base64.b64decode(headers["x-eventbridge-signature-secret"])
        secret = key.recover_data_from_signature(wrapped, padding.PKCS1v15(), None)
        expected = base64.b64encode(hmac.new(secret, message, hashlib.sha1).digest()).decode()
        if hmac.compare_digest(expected, headers["x-eventbridge-signature"]):
            return name
    raise AssertionError("no string-to-sign form verifies")
