"""Fetch EventBridge signing certificates safely and cache their public keys per URL.

Rules from `docs/eventbridge-signature.md` ("Verifying v2", steps 2-3, and "Which certificate
URLs to trust"): the certificate URL must match the trusted pattern (:mod:`webhook.trust`,
whole-string match) *before* any fetch, so a forged header cannot make us request an arbitrary
URL (SSRF); the fetch has a short timeout, a small size cap and follows no redirects; the body
is parsed as an X.509 PEM certificate holding an RSA key; when keys are pinned
(``EVENTBRIDGE_CERT_SHA256``) any other key is ``untrusted_certificate``. A fetch failure is
temporary (503, EventBridge retries) and remembered for a few seconds.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.errors import Reason
from webhook.errors import CertificateUnavailable, SignatureError

FETCH_TIMEOUT_SECONDS = 3.0
"""Connect/read timeout of one certificate fetch; EventBridge wants an answer in a few seconds."""
MAX_CERTIFICATE_BYTES = 64 * 1024
"""A PEM certificate is about 2 KiB; anything over 64 KiB is not one."""
MAX_ENTRIES = 256
"""Certificate URLs remembered per process; EventBridge uses one or two at a time."""


def create_http_client() -> httpx.Client:
    """An httpx client for certificate fetches: short timeout, no redirects.

    ``trust_env`` stays on so ``HTTPS_PROXY`` and ``SSL_CERT_FILE`` work as usual.
    """
    return httpx.Client(timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False)


KeySeen = Callable[[str, bool], None]
"""Called once per process for each new certificate key: its fingerprint and whether trusted."""


def fingerprint(key: RSAPublicKey) -> str:
    """Lower-case hex SHA-256 of ``key``'s DER SubjectPublicKeyInfo, as pins are written."""
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True, slots=True)
class _Fetched:
    """A cache entry: the key and its fingerprint, or the failure, until ``expires`` (s)."""

    expires: float
    key: RSAPublicKey | None = None
    fingerprint: str = ""
    failure: str = ""


class CertificateCache:
    """Public keys by certificate URL: kept ``ttl_seconds`` after a successful fetch, and a
    failed fetch remembered ``failure_ttl_seconds`` (a flood naming one bad URL fetches it once).

    ``pattern`` is the compiled trusted-URL expression (matched with ``fullmatch``, see
    :mod:`webhook.trust`); ``pins`` the trusted key fingerprints (empty: any key); ``on_new_key``
    hears of each key the first time this process sees it (a metric). ``clock`` returns
    seconds (monotonic) and is injectable for tests. Thread-safe: at most one fetch at a time
    within a process. At most :data:`MAX_ENTRIES` URLs are remembered (expired ones go first).
    """

    def __init__(
        self,
        pattern: re.Pattern[str],
        client: httpx.Client,
        *,
        ttl_seconds: float,
        failure_ttl_seconds: float = 5.0,
        pins: frozenset[str] = frozenset(),
        on_new_key: KeySeen | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pattern = pattern
        self._client = client
        self._ttl = ttl_seconds
        self._failure_ttl = failure_ttl_seconds
        self._pins = pins
        self._on_new_key = on_new_key
        self._clock = clock
        self._entries: dict[str, _Fetched] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def public_key(self, url: str) -> RSAPublicKey:
        """The RSA public key of the certificate at ``url``.

        Raises :class:`SignatureError`: ``untrusted_certificate_url`` without any network
        access when ``url`` does not match the pattern, ``untrusted_certificate`` when pins are
        set and the key is not pinned. Raises :class:`CertificateUnavailable` when the fetch or
        the parse fails (now, or within ``failure_ttl_seconds`` before).
        """
        if not self._pattern.fullmatch(url):
            raise SignatureError(Reason.UNTRUSTED_CERTIFICATE_URL)
        entry = self._entries.get(url)
        if entry is None or entry.expires <= self._clock():
            with self._lock:
                entry = self._entries.get(url)
                if entry is None or entry.expires <= self._clock():
                    entry = self._load(url)
        if entry.key is None:
            raise CertificateUnavailable(entry.failure)
        if self._pins and entry.fingerprint not in self._pins:
            raise SignatureError(Reason.UNTRUSTED_CERTIFICATE, entry.fingerprint)
        return entry.key

    def _load(self, url: str) -> _Fetched:
        """Fetch and parse ``url`` into a new entry (a failure entry when that fails)."""
        try:
            key = parse_public_key(self._fetch(url))
        except CertificateUnavailable as exc:
            entry = _Fetched(self._clock() + self._failure_ttl, failure=str(exc))
        else:
            entry = _Fetched(self._clock() + self._ttl, key, fingerprint(key))
            self._note(entry.fingerprint)
        if len(self._entries) >= MAX_ENTRIES:
            self._evict()
        self._entries[url] = entry
        return entry

    def _note(self, key_print: str) -> None:
        if key_print not in self._seen:
            self._seen.add(key_print)
            if self._on_new_key is not None:
                self._on_new_key(key_print, not self._pins or key_print in self._pins)

    def _evict(self) -> None:
        now = self._clock()
        for url in [url for url, entry in self._entries.items() if entry.expires <= now]:
            del self._entries[url]
        while len(self._entries) >= MAX_ENTRIES:  # all live: drop the oldest inserted
            del self._entries[next(iter(self._entries))]

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
