"""Signature verification as a pure function: frozen clock, in-memory keys, every variant."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from tests.support.eventbridge_signer import Identity, Signer
from webhook.errors import SignatureError
from webhook.signature import strings_to_sign, verify_delivery

CERT_URL = "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/x509/public.pem"
TARGET = "https://hooks.example.test/callbacks/eventbridge"
NOW_MS = 1_700_000_000_000
BODY = b'{"type":"dashscope:System:AsyncTaskFinish","data":{"task_id":"t"}}'


class Keys:
    """Public keys by URL, counting lookups (the HTTP fetch is tested in test_certificates)."""

    def __init__(self, identity: Identity) -> None:
        self.key = identity.private_key.public_key()
        self.lookups: list[str] = []

    def public_key(self, url: str) -> RSAPublicKey:
        self.lookups.append(url)
        if url != CERT_URL:
            raise SignatureError("untrusted_certificate_url")
        return self.key


@pytest.fixture
def keys(identity: Identity) -> Keys:
    """The trusted key for CERT_URL."""
    return Keys(identity)


@pytest.fixture
def sign(identity: Identity) -> Signer:
    """A signer for CERT_URL and TARGET."""
    return Signer(identity, CERT_URL, TARGET)


def verify(headers: dict[str, str], keys: Keys, *, body: bytes = BODY, **kw: object) -> str:
    """Run the verifier with the frozen clock and a 60 s window."""
    options: dict[str, object] = {"target_url": TARGET, "now_ms": NOW_MS, "max_skew_ms": 60_000}
    options.update(kw)
    return verify_delivery(headers, body, keys=keys, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["v2", "v1"])
@pytest.mark.parametrize("newline", [True, False])
@pytest.mark.parametrize("token_line", [True, False])
def test_every_documented_variant_verifies(
    sign: Signer, keys: Keys, version: str, newline: bool, token_line: bool
) -> None:
    """v1 and v2 verify with or without the trailing newline and with or without the token line."""
    headers = sign.headers(
        BODY,
        version=version,
        timestamp_ms=NOW_MS,
        token="tok",
        token_line=token_line,
        trailing_newline=newline,
    )
    assert verify(headers, keys, token="tok") == version


@pytest.mark.parametrize("version", ["v2", "v1"])
@pytest.mark.parametrize("newline", [True, False])
def test_without_token_header(sign: Signer, keys: Keys, version: str, newline: bool) -> None:
    """Without any token header both generations verify in both newline forms."""
    headers = sign.headers(BODY, version=version, timestamp_ms=NOW_MS, trailing_newline=newline)
    assert verify(headers, keys) == version


@pytest.mark.parametrize("version", ["v2", "v1"])
@pytest.mark.parametrize("newline", [True, False])
def test_empty_token_line_without_header_verifies(
    sign: Signer, keys: Keys, version: str, newline: bool
) -> None:
    """An empty token line signed although no token header is sent (the SDK's first commit)."""
    headers = sign.headers(
        BODY, version=version, timestamp_ms=NOW_MS, token="", trailing_newline=newline
    )
    del headers["X-Eventbridge-Signature-Token"]
    assert verify(headers, keys) == version


def test_header_names_any_case(sign: Signer, keys: Keys) -> None:
    """Header names are matched case-insensitively."""
    headers = {k.upper(): v for k, v in sign.headers(BODY, timestamp_ms=NOW_MS).items()}
    assert verify(headers, keys) == "v2"


def test_string_to_sign_layout() -> None:
    """The candidates follow the spec's layout: URL, four header lines, body, optional newline."""
    headers = {
        "x-eventbridge-signature-timestamp": "1",
        "x-eventbridge-hash-method": "SHA256",
        "x-eventbridge-signature-version": "1.0",
        "x-eventbridge-signature-url": "u",
        "x-eventbridge-signature-token": "k",
    }
    head = (
        b"T\nx-eventbridge-signature-timestamp: 1\nx-eventbridge-hash-method: SHA256\n"
        b"x-eventbridge-signature-version: 1.0\nx-eventbridge-signature-url: u\n"
    )
    token = b"x-eventbridge-signature-token: k\n"
    expected = [head + b"B\n", head + token + b"B\n", head + b"B", head + token + b"B"]
    got = strings_to_sign(headers, b"B", target_url="T", generation="v2")
    assert sorted(got) == sorted(expected)
    v1_headers = {**headers, "x-eventbridge-signature-method": "HMAC-SHA1"}
    del v1_headers["x-eventbridge-hash-method"]
    v1 = strings_to_sign(v1_headers, b"B", target_url="T", generation="v1")
    v1_expected = [
        c.replace(b"hash-method: SHA256", b"signature-method: HMAC-SHA1") for c in expected
    ]
    assert sorted(v1) == sorted(v1_expected)
    assert v1[0] == v1_expected[1]  # v1 signs the token line (the SDK): tried first


@pytest.mark.parametrize(
    ("offset_ms", "ok"), [(60_000, True), (-60_000, True), (60_001, False), (-60_001, False)]
)
def test_timestamp_window_in_milliseconds(
    sign: Signer, keys: Keys, offset_ms: int, ok: bool
) -> None:
    """Timestamps exactly at the window pass; one millisecond beyond, past or future, is expired."""
    headers = sign.headers(BODY, timestamp_ms=NOW_MS + offset_ms)
    if ok:
        assert verify(headers, keys) == "v2"
    else:
        with pytest.raises(SignatureError) as caught:
            verify(headers, keys)
        assert caught.value.reason == "expired"


@pytest.mark.parametrize(
    "value", ["", "abc", "1.7e12", "-5", "+1700000000000", "\uff11\uff12\uff13"]
)
def test_non_integer_timestamp_is_bad(sign: Signer, keys: Keys, value: str) -> None:
    """A timestamp that is not plain decimal milliseconds is bad_timestamp, before key lookup."""
    headers = sign.headers(BODY, timestamp_ms=NOW_MS)
    headers["X-Eventbridge-Signature-Timestamp"] = value
    with pytest.raises(SignatureError) as caught:
        verify(headers, keys)
    assert caught.value.reason == "bad_timestamp"
    assert keys.lookups == []


def test_seconds_timestamp_is_expired(sign: Signer, keys: Keys) -> None:
    """A 10-digit (seconds) timestamp is read as milliseconds and so is expired."""
    headers = sign.headers(BODY, timestamp_ms=NOW_MS // 1000)
    with pytest.raises(SignatureError, match="expired"):
        verify(headers, keys)


@pytest.mark.parametrize(
    "drop",
    [
        "X-Eventbridge-Signature-Timestamp",
        "X-Eventbridge-Hash-Method",
        "X-Eventbridge-Signature-Version",
        "X-Eventbridge-Signature-Url",
        "X-Eventbridge-Signature-V2",
    ],
)
def test_missing_v2_header(sign: Signer, keys: Keys, drop: str) -> None:
    """Any missing v2 header is missing_signature, with no key lookup."""
    headers = sign.headers(BODY, timestamp_ms=NOW_MS)
    del headers[drop]
    with pytest.raises(SignatureError) as caught:
        verify(headers, keys)
    assert caught.value.reason == "missing_signature"
    assert keys.lookups == []


@pytest.mark.parametrize(
    "drop", ["X-Eventbridge-Signature-Secret", "X-Eventbridge-Signature-Method"]
)
def test_missing_v1_header(sign: Signer, keys: Keys, drop: str) -> None:
    """A v1 delivery missing its secret or method header is missing_signature."""
    headers = sign.headers(BODY, version="v1", timestamp_ms=NOW_MS)
    del headers[drop]
    with pytest.raises(SignatureError, match="missing_signature"):
        verify(headers, keys)


def test_no_headers_at_all(keys: Keys) -> None:
    """A plain POST without EventBridge headers is missing_signature."""
    with pytest.raises(SignatureError, match="missing_signature"):
        verify({"Content-Type": "application/json"}, keys)


@pytest.mark.parametrize(
    "header",
    ["X-Eventbridge-Signature-V2"],
)
@pytest.mark.parametrize("garbage", ["!!!not base64!!!", "YWJj=", "é", ""])
def test_garbage_base64_v2(sign: Signer, keys: Keys, header: str, garbage: str) -> None:
    """A v2 signature that is not Base64 (or is empty) is bad_signature."""
    headers = sign.headers(BODY, timestamp_ms=NOW_MS)
    headers[header] = garbage
    with pytest.raises(SignatureError, match="bad_signature"):
        verify(headers, keys)


@pytest.mark.parametrize("header", ["X-Eventbridge-Signature-Secret", "X-Eventbridge-Signature"])
@pytest.mark.parametrize("garbage", ["%%%", base64.b64encode(b"short").decode()])
def test_garbage_v1_material(sign: Signer, keys: Keys, header: str, garbage: str) -> None:
    """A v1 secret or HMAC that is not Base64 or does not unpad is bad_signature."""
    headers = sign.headers(BODY, version="v1", timestamp_ms=NOW_MS)
    headers[header] = garbage
    with pytest.raises(SignatureError, match="bad_signature"):
        verify(headers, keys)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tampered_body(sign: Signer, keys: Keys, version: str) -> None:
    """One changed byte of the body fails verification."""
    headers = sign.headers(BODY, version=version, timestamp_ms=NOW_MS)
    with pytest.raises(SignatureError, match="bad_signature"):
        verify(headers, keys, body=BODY.replace(b'"t"', b'"u"'))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_wrong_target_url(sign: Signer, keys: Keys, version: str) -> None:
    """A signature over another target URL fails."""
    headers = sign.headers(BODY, version=version, timestamp_ms=NOW_MS)
    with pytest.raises(SignatureError, match="bad_signature"):
        verify(headers, keys, target_url=TARGET + "x")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_wrong_key(stranger: Identity, keys: Keys, version: str) -> None:
    """A signature made with a key other than the certificate's fails."""
    headers = Signer(stranger, CERT_URL, TARGET).headers(BODY, version=version, timestamp_ms=NOW_MS)
    with pytest.raises(SignatureError, match="bad_signature"):
        verify(headers, keys)


@pytest.mark.parametrize("sent", ["wrong", None])
def test_token_must_match_when_configured(sign: Signer, keys: Keys, sent: str | None) -> None:
    """With a token configured, a wrong or absent token header is bad_token."""
    headers = sign.headers(BODY, timestamp_ms=NOW_MS, token=sent)
    with pytest.raises(SignatureError) as caught:
        verify(headers, keys, token="right")
    assert caught.value.reason == "bad_token"


def test_untrusted_url_is_refused_by_key_source(sign: Signer, keys: Keys) -> None:
    """The certificate URL goes to the key source, whose refusal is the answer."""
    headers = sign.headers(BODY, timestamp_ms=NOW_MS)
    headers["X-Eventbridge-Signature-Url"] = "https://evil.example/cert.pem"
    with pytest.raises(SignatureError, match="untrusted_certificate_url"):
        verify(headers, keys)
