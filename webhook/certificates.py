"""Fetch EventBridge signing certificates safely and cache their public keys per URL.

Rules from `docs/eventbridge-signature.md` ("Verifying v2", steps 2-3): the certificate URL must
match the trusted pattern (``EVENTBRIDGE_CERT_URL_REGEX``, whole-string match) *before* any
fetch, so a forged header cannot make us request an arbitrary URL (SSRF); the fetch has a short
timeout, a small size cap and follows no redirects; the body is parsed as an X.509 PEM
certificate holding an RSA key. A fetch failure is temporary (503, EventBridge retries).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from core.errors import Reason
from webhook.errors import CertificateUnavailable, SignatureError

FETCH_TIMEOUT_SECONDS = 3.0
"""Connect/read timeout of one certificate fetch; EventBridge wants an answer in a few seconds."""
MAX_CERTIFICATE_BYTES = 64 * 1024
"""A PEM certificate is about 2 KiB; anything over 64 KiB is not one."""


def create_http_client() -> httpx.Client:
    """An httpx client for certificate fetches: short timeout, no redirects.

    ``trust_env`` stays on so ``HTTPS_PROXY`` and ``SSL_CERT_FILE`` work as usual.
    """
    return httpx.Client(timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False)


class CertificateCache:
    """Public keys by certificate URL, kept ``ttl_seconds`` after each successful fetch.

    ``pattern`` is the compiled trusted-URL expression (matched with ``fullmatch``); ``clock``
    returns seconds (monotonic) and is injectable for tests. Thread-safe: at most one fetch per
    URL at a time within a process.
    """

    def __init__(
        self,
        pattern: re.Pattern[str],
        client: httpx.Client,
        *,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pattern = pattern
        self._client = client
        self._ttl = ttl_seconds
        self._clock = clock
        self._keys: dict[str, tuple[float, RSAPublicKey]] = {}
        self._lock = threading.Lock()

    def public_key(self, url: str) -> RSAPublicKey:
        """The RSA public key of the certificate at ``url``.

        Raises :class:`SignatureError` (``untrusted_certificate_url``) without any network
        access when ``url`` does not match the pattern; :class:`CertificateUnavailable` when
        the fetch or the parse fails.
        """
        if not self._pattern.fullmatch(url):
            raise SignatureError(Reason.UNTRUSTED_CERTIFICATE_URL)
        cached = self._keys.get(url)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        with self._lock:
            cached = self._keys.get(url)
            if cached is None or cached[0] <= self._clock():
                cached = (self._clock() + self._ttl, parse_public_key(self._fetch(url)))
                self._keys[url] = cached
        return cached[1]

    def _fetch(self, url: str) -> bytes:
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise CertificateUnavailable(
                        f"certificate fetch answered {response.status_code}"
                    )
                return _read_capped(response)
        except httpx.HTTPError as exc:
            raise CertificateUnavailable(f"certificate fetch failed: {type(exc).__name__}") from exc


def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_CERTIFICATE_BYTES:
            raise CertificateUnavailable("certificate larger than the cap")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_public_key(pem: bytes) -> RSAPublicKey:
    """The RSA public key of an X.509 PEM certificate.

    Raises :class:`CertificateUnavailable` when ``pem`` is not a certificate or its key is not
    RSA (a 503: the sender retries while the operator looks at the trusted URL).
    """
    try:
        key = x509.load_pem_x509_certificate(pem).public_key()
    except ValueError as exc:
        raise CertificateUnavailable("certificate is not X.509 PEM") from exc
    if not isinstance(key, RSAPublicKey):
        raise CertificateUnavailable("certificate key is not RSA")
    return key
