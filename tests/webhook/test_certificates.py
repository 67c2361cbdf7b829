"""Certificate fetching and caching against a real HTTPS host on 127.0.0.1."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.eventbridge_signer import CertificateHost, Identity, Route, make_identity
from tests.webhook.conftest import CERT_PATH, cert_url_regex
from webhook import certificates
from webhook.certificates import (
    MAX_CERTIFICATE_BYTES,
    CertificateCache,
    create_http_client,
    fingerprint,
    parse_public_key,
)
from webhook.errors import CertificateUnavailable, SignatureError


class Clock:
    """A settable monotonic clock, seconds."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A frozen clock the test advances."""
    return Clock()


@pytest.fixture
def cache(cert_host: CertificateHost, clock: Clock) -> CertificateCache:
    """A cache trusting the local host's /certs/*.pem, one-hour TTL."""
    pattern = re.compile(cert_url_regex(cert_host))
    return CertificateCache(pattern, create_http_client(), ttl_seconds=3600, clock=clock)


def local_cache(host: CertificateHost, clock: Clock, **options: Any) -> CertificateCache:
    """A cache for the local host's /certs/*.pem with ``options`` (pins, failure TTL, ...)."""
    pattern = re.compile(cert_url_regex(host))
    return CertificateCache(pattern, create_http_client(), ttl_seconds=3600, clock=clock, **options)


def key_print(identity: Identity) -> str:
    """The hex SHA-256 of ``identity``'s DER SubjectPublicKeyInfo, computed independently."""
    der = identity.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def public_pem(identity: Identity) -> bytes:
    """The SubjectPublicKeyInfo PEM of ``identity``'s key, for comparisons."""
    return identity.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_pem(cache: CertificateCache, url: str) -> bytes:
    """The PEM of the key the cache gives for ``url``."""
    return cache.public_key(url).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_fetches_parses_and_caches(
    cache: CertificateCache, cert_host: CertificateHost, identity: Identity, clock: Clock
) -> None:
    """The key comes from the served certificate, fetched once within the TTL, again after it."""
    url = cert_host.url(CERT_PATH)
    assert key_pem(cache, url) == public_pem(identity)
    clock.now += 3599
    cache.public_key(url)
    assert cert_host.requests == [CERT_PATH]
    clock.now += 2
    cache.public_key(url)
    assert cert_host.requests == [CERT_PATH, CERT_PATH]


@pytest.mark.parametrize(
    "make_url",
    [
        lambda h: h.url(CERT_PATH).replace("https://", "http://"),
        lambda h: h.url("/certs/eventbridge.pem?x=1"),
        lambda h: h.url("/elsewhere/eventbridge.pem"),
        lambda h: h.url(CERT_PATH) + "#frag",
        lambda h: f"https://user@127.0.0.1:{h.port}{CERT_PATH}",
        lambda h: f"https://127.0.0.1:{h.port + 1}{CERT_PATH}",
    ],
)
def test_untrusted_urls_are_never_fetched(
    cache: CertificateCache, cert_host: CertificateHost, make_url: object
) -> None:
    """A URL outside the pattern (http, query, path, fragment, user-info, port) is never fetched."""
    with pytest.raises(SignatureError) as caught:
        cache.public_key(make_url(cert_host))  # type: ignore[operator]
    assert caught.value.reason == "untrusted_certificate_url"
    assert cert_host.requests == []


@pytest.mark.parametrize(
    ("route", "why"),
    [
        (Route(b"gone", 404), "404"),
        (Route(b"", 302, {"Location": "https://127.0.0.1/certs/other.pem"}), "redirect"),
        (Route(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"), "garbage"),
        (Route(b"x" * (MAX_CERTIFICATE_BYTES + 1)), "oversized"),
    ],
)
def test_bad_answers_are_unavailable(
    cache: CertificateCache, cert_host: CertificateHost, route: Route, why: str
) -> None:
    """A 404, a redirect (not followed), a non-certificate or an oversized body is a 503 cause."""
    cert_host.routes["/certs/bad.pem"] = route
    with pytest.raises(CertificateUnavailable):
        cache.public_key(cert_host.url("/certs/bad.pem"))
    assert cert_host.requests == ["/certs/bad.pem"], why


def test_host_down_is_unavailable(clock: Clock) -> None:
    """A refused connection is a CertificateUnavailable, not a crash."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pattern = re.compile(r"https://127\.0\.0\.1:\d+/.*\.pem")
    cache = CertificateCache(pattern, create_http_client(), ttl_seconds=60, clock=clock)
    with pytest.raises(CertificateUnavailable):
        cache.public_key(f"https://127.0.0.1:{port}/c.pem")


def test_non_rsa_certificate_is_refused() -> None:
    """A certificate whose key is not RSA cannot verify EventBridge signatures: unavailable."""
    key = ec.generate_private_key(ec.SECP256R1())
    rsa_cert = make_identity().certificate_pem
    assert parse_public_key(rsa_cert) is not None
    template = x509.load_pem_x509_certificate(rsa_cert)
    builder = (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(template.issuer)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(template.not_valid_before_utc)
        .not_valid_after(template.not_valid_after_utc)
    )
    pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertificateUnavailable, match="not RSA"):
        parse_public_key(pem)


def test_failed_fetch_is_remembered_briefly(
    cert_host: CertificateHost, clock: Clock, identity: Identity
) -> None:
    """A failed fetch answers unavailable without refetching until the failure TTL runs out."""
    cache = local_cache(cert_host, clock, failure_ttl_seconds=5)
    url = cert_host.url("/certs/missing.pem")
    for _ in range(20):
        with pytest.raises(CertificateUnavailable, match="404"):
            cache.public_key(url)
    assert cert_host.requests == ["/certs/missing.pem"]
    clock.now += 5
    cert_host.routes["/certs/missing.pem"] = Route(identity.certificate_pem)
    assert key_pem(cache, url) == public_pem(identity)
    assert cert_host.requests == ["/certs/missing.pem"] * 2


def test_concurrent_flood_fetches_a_bad_url_once(cert_host: CertificateHost, clock: Clock) -> None:
    """Thirty threads asking at once for a failing URL cause one fetch; each gets unavailable."""
    cache = local_cache(cert_host, clock)
    url = cert_host.url("/certs/missing.pem")
    outcomes: list[str] = []

    def ask() -> None:
        try:
            cache.public_key(url)
        except CertificateUnavailable:
            outcomes.append("unavailable")

    threads = [threading.Thread(target=ask) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["unavailable"] * 30
    assert cert_host.requests == ["/certs/missing.pem"]


def test_fingerprint_is_sha256_of_spki(identity: Identity) -> None:
    """The pin format: hex SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    key = parse_public_key(identity.certificate_pem)
    assert fingerprint(key) == key_print(identity)


def test_pinned_key_is_trusted(
    cert_host: CertificateHost, clock: Clock, identity: Identity
) -> None:
    """With the certificate's key pinned, the key is returned."""
    cache = local_cache(cert_host, clock, pins=frozenset({key_print(identity), "0" * 64}))
    assert key_pem(cache, cert_host.url(CERT_PATH)) == public_pem(identity)


def test_unpinned_key_is_untrusted_and_fetched_once(
    cert_host: CertificateHost, clock: Clock, identity: Identity
) -> None:
    """A key not among the pins is untrusted_certificate, each time, from one fetch."""
    seen: list[tuple[str, bool]] = []
    cache = local_cache(
        cert_host, clock, pins=frozenset({"0" * 64}), on_new_key=lambda *a: seen.append(a)
    )
    for _ in range(3):
        with pytest.raises(SignatureError) as caught:
            cache.public_key(cert_host.url(CERT_PATH))
        assert caught.value.reason == "untrusted_certificate"
    assert cert_host.requests == [CERT_PATH]
    assert seen == [(key_print(identity), False)]


def test_each_new_key_is_reported_once(
    cert_host: CertificateHost, clock: Clock, identity: Identity, stranger: Identity
) -> None:
    """The new-key hook hears of each distinct key once, however many URLs or refetches."""
    seen: list[tuple[str, bool]] = []
    cache = local_cache(cert_host, clock, on_new_key=lambda *a: seen.append(a))
    cert_host.routes["/certs/same.pem"] = Route(identity.certificate_pem)
    cert_host.routes["/certs/rotated.pem"] = Route(stranger.certificate_pem)
    for path in (CERT_PATH, "/certs/same.pem", "/certs/rotated.pem"):
        cache.public_key(cert_host.url(path))
    clock.now += 3601
    cache.public_key(cert_host.url(CERT_PATH))
    assert seen == [(key_print(identity), True), (key_print(stranger), True)]


def test_remembered_urls_are_bounded(
    cert_host: CertificateHost, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Distinct failing URLs (a flood of made-up paths) never grow the cache past its bound."""
    monkeypatch.setattr(certificates, "MAX_ENTRIES", 4)
    cache = local_cache(cert_host, clock)
    for n in range(10):
        with pytest.raises(CertificateUnavailable):
            cache.public_key(cert_host.url(f"/certs/made-up-{n}.pem"))
    assert len(cache._entries) <= 4
