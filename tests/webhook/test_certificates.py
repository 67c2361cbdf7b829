"""Certificate fetching and caching against a real HTTPS host on 127.0.0.1."""

from __future__ import annotations

import re
import socket

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core.settings import DEFAULT_CERT_URL_REGEX
from tests.support.eventbridge_signer import CertificateHost, Identity, Route, make_identity
from tests.webhook.conftest import CERT_PATH, cert_url_regex
from webhook.certificates import (
    MAX_CERTIFICATE_BYTES,
    CertificateCache,
    create_http_client,
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
    "url",
    [
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/x509/public.pem",
        "https://ap-southeast-1-eventbridge.oss-accelerate.aliyuncs.com/a/b-c_d.pem",
    ],
)
def test_default_pattern_admits_official_hosts(url: str) -> None:
    """The production pattern admits regional EventBridge certificate URLs."""
    assert re.fullmatch(DEFAULT_CERT_URL_REGEX, url)


@pytest.mark.parametrize(
    "url",
    [
        "http://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/x509/public.pem",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com:8443/x509/public.pem",
        "https://u@cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/x509/public.pem",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/x509/public.pem?a=b",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com.evil.test/public.pem",
        "https://evil.test/cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/public.pem",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/x509/public.pem.txt",
        "https://127.0.0.1/public.pem",
    ],
)
def test_default_pattern_refuses_lookalikes(url: str) -> None:
    """The production pattern refuses http, ports, user-info, queries and look-alike hosts."""
    assert not re.fullmatch(DEFAULT_CERT_URL_REGEX, url)


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
