"""Verify EventBridge HTTP push signatures on the raw request bytes.

Every protocol fact here comes from `docs/eventbridge-signature.md` (EventBridge's "signature
algorithm" pages, the Java SDK ``aliyun/alibabacloud-eventbridge-sdk`` and the v2 demo receiver
``aliyuneventbridge/eb-http-target``):

- v2: ``x-eventbridge-signature-v2`` is Base64 RSA PKCS#1 v1.5 / SHA-256 over the string-to-sign.
- v1: ``x-eventbridge-signature-secret`` is a one-time secret padded with PKCS#1 v1.5 *type 1*
  under EventBridge's private key; ``x-eventbridge-signature`` is Base64 HMAC-SHA1 under it.
- The timestamp is milliseconds since the epoch. Header names are lower case in the
  string-to-sign. The body is signed byte for byte, before any JSON parsing.
- Documented ambiguities, all accepted: a trailing ``\\n`` after the body or not; in both
  generations, the token line present or not (the v1 SDK signs it, the demos never do).

This module is pure: the clock (``now_ms``), the tolerance and the key source are arguments, so
tests freeze them. It imports neither Flask nor httpx.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from core.errors import Reason
from webhook.errors import SignatureError

TIMESTAMP = "x-eventbridge-signature-timestamp"
VERSION = "x-eventbridge-signature-version"
CERT_URL = "x-eventbridge-signature-url"
TOKEN = "x-eventbridge-signature-token"  # noqa: S105  # a header name, not a secret
HASH_METHOD = "x-eventbridge-hash-method"
SIGNATURE_V2 = "x-eventbridge-signature-v2"
SIGNATURE_METHOD = "x-eventbridge-signature-method"
SECRET = "x-eventbridge-signature-secret"  # noqa: S105  # a header name, not a secret
SIGNATURE_V1 = "x-eventbridge-signature"

Generation = Literal["v1", "v2"]

_REQUIRED: dict[Generation, tuple[str, ...]] = {
    "v2": (TIMESTAMP, HASH_METHOD, VERSION, CERT_URL, SIGNATURE_V2),
    "v1": (TIMESTAMP, SIGNATURE_METHOD, VERSION, CERT_URL, SIGNATURE_V1, SECRET),
}
_MILLIS = re.compile(r"[0-9]{1,16}")
_PKCS1V15 = padding.PKCS1v15()  # stateless: one instance serves every verification
_SHA256 = hashes.SHA256()


class HeaderItems(Protocol):
    """Anything with ``items()`` of ``(name, value)`` pairs: a dict, werkzeug's ``Headers``."""

    def items(self) -> Iterable[tuple[str, str]]: ...


class PublicKeySource(Protocol):
    """Gives EventBridge's RSA public key for a certificate URL (see :mod:`webhook.certificates`).

    Raises :class:`~webhook.errors.SignatureError` (``untrusted_certificate_url``) for a URL
    outside the trusted pattern, (``untrusted_certificate``) for a key that is not pinned,
    :class:`~webhook.errors.CertificateUnavailable` when the
    certificate cannot be fetched or parsed.
    """

    def public_key(self, url: str) -> RSAPublicKey: ...


def signature_headers(headers: HeaderItems) -> dict[str, str]:
    """The ``x-eventbridge-*`` headers of a request, names lower-cased."""
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-eventbridge-")}


def generation_of(headers: Mapping[str, str]) -> Generation:
    """``v2`` when the v2 signature is present, else ``v1`` when the v1 pair is; else 401.

    ``headers`` has lower-case names. Raises :class:`SignatureError` (``missing_signature``)
    when a header the generation signs is absent.
    """
    if SIGNATURE_V2 in headers:
        generation: Generation = "v2"
    elif SIGNATURE_V1 in headers and SECRET in headers:
        generation = "v1"
    else:
        raise SignatureError(Reason.MISSING_SIGNATURE)
    missing = [name for name in _REQUIRED[generation] if name not in headers]
    if missing:
        raise SignatureError(Reason.MISSING_SIGNATURE, ", ".join(missing))
    return generation


def check_timestamp(value: str, *, now_ms: int, max_skew_ms: int) -> None:
    """Require ``value`` to be integer milliseconds within ``max_skew_ms`` of ``now_ms``.

    Raises :class:`SignatureError`: ``bad_timestamp`` when not 1-16 decimal digits,
    ``expired`` when too old or too far in the future.
    """
    if not _MILLIS.fullmatch(value):
        raise SignatureError(Reason.BAD_TIMESTAMP)
    if abs(now_ms - int(value)) > max_skew_ms:
        raise SignatureError(Reason.EXPIRED)


def strings_to_sign(
    headers: Mapping[str, str], body: bytes, *, target_url: str, generation: Generation
) -> list[bytes]:
    """Every string-to-sign the spec accepts for this delivery, most common first.

    ``headers`` has lower-case names (values as received, latin-1 as in WSGI); ``body`` is the
    raw request body; ``target_url`` is ``WEBHOOK_PUBLIC_URL``, never the request's ``Host``.
    Four candidates in either generation ("Known ambiguities"): trailing newline or not, times
    token line or not. The v1 SDK signs the token line when the header is present, its first
    commit always (empty without the header); the demos and RocketMQ's sink never do. The
    likeliest form comes first: the token line only for v1 with a token header.
    """
    return list(_candidates(headers, body, target_url=target_url, generation=generation))


def _candidates(
    headers: Mapping[str, str], body: bytes, *, target_url: str, generation: Generation
) -> Iterator[bytes]:
    """:func:`strings_to_sign`, built one at a time: a delivery signed in the likeliest form
    (nearly all) needs only the first, so the other three copies of the body are never made."""
    method = HASH_METHOD if generation == "v2" else SIGNATURE_METHOD
    names = (TIMESTAMP, method, VERSION, CERT_URL)
    head = target_url.encode() + b"\n" + _lines(headers, names)
    if TOKEN in headers:
        with_token = head + _lines(headers, (TOKEN,))
        prefixes = [head, with_token] if generation == "v2" else [with_token, head]
    else:
        prefixes = [head, head + TOKEN.encode() + b": \n"]
    for end in (b"\n", b""):
        for prefix in prefixes:
            yield prefix + body + end


def _lines(headers: Mapping[str, str], names: tuple[str, ...]) -> bytes:
    try:
        return b"".join(f"{name}: {headers[name]}\n".encode("latin-1") for name in names)
    except UnicodeEncodeError as exc:
        raise SignatureError(Reason.BAD_SIGNATURE, "header is not latin-1") from exc


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(Reason.BAD_SIGNATURE, "not Base64") from exc


def verify_v2(key: RSAPublicKey, signature_b64: str, candidates: Iterable[bytes]) -> None:
    """Accept if the RSA PKCS#1 v1.5 SHA-256 signature matches any candidate, else 401."""
    signature = _b64(signature_b64)
    for candidate in candidates:
        try:
            key.verify(signature, candidate, _PKCS1V15, _SHA256)
            return
        except InvalidSignature:
            continue
    raise SignatureError(Reason.BAD_SIGNATURE)


def verify_v1(
    key: RSAPublicKey, secret_b64: str, hmac_b64: str, candidates: Iterable[bytes]
) -> None:
    """Recover the one-time secret, then accept if HMAC-SHA1 matches any candidate, else 401."""
    expected = _b64(hmac_b64)
    try:
        secret = key.recover_data_from_signature(_b64(secret_b64), _PKCS1V15, None)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(Reason.BAD_SIGNATURE, "secret does not unpad") from exc
    for candidate in candidates:
        digest = hmac.new(secret, candidate, hashlib.sha1).digest()
        if hmac.compare_digest(digest, expected):
            return
    raise SignatureError(Reason.BAD_SIGNATURE)


def check_token(headers: Mapping[str, str], token: str | None) -> None:
    """When ``token`` is configured, require the token header to equal it (constant time)."""
    if token is None:
        return
    sent = headers.get(TOKEN, "").encode("latin-1", "replace")
    if not hmac.compare_digest(sent, token.encode("latin-1", "replace")):
        raise SignatureError(Reason.BAD_TOKEN)


def verify_delivery(
    headers: HeaderItems,
    body: bytes,
    *,
    target_url: str,
    keys: PublicKeySource,
    now_ms: int,
    max_skew_ms: int,
    token: str | None = None,
) -> Generation:
    """Verify one delivery; return its signature generation.

    ``headers`` are the request headers in any case; ``body`` the raw bytes; ``target_url``
    the URL configured on the EventBridge target (``WEBHOOK_PUBLIC_URL``); ``now_ms`` the
    receiver's clock and ``max_skew_ms`` the window, both milliseconds. Checks run in the
    spec's order: headers, timestamp, certificate URL (before any fetch), signature, token.

    Raises :class:`SignatureError` (401 reasons, ``untrusted_certificate`` among them from
    ``keys``) or
    :class:`~webhook.errors.CertificateUnavailable` (503) from ``keys``.
    """
    found = signature_headers(headers)
    generation = generation_of(found)
    check_timestamp(found[TIMESTAMP], now_ms=now_ms, max_skew_ms=max_skew_ms)
    key = keys.public_key(found[CERT_URL])
    candidates = _candidates(found, body, target_url=target_url, generation=generation)
    if generation == "v2":
        verify_v2(key, found[SIGNATURE_V2], candidates)
    else:
        verify_v1(key, found[SECRET], found[SIGNATURE_V1], candidates)
    check_token(found, token)
    return generation
