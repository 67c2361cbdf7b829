"""The callback route through Flask's test client, with real Redis and the real HTTPS cert host."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask.testing import FlaskClient
from structlog.testing import capture_logs

from core.queues import ARCHIVE_TASK
from core.settings import Settings
from core.store import PENDING_KEY, ReceiptStore
from tests.support.eventbridge_signer import CertificateHost, Identity, Route, Signer
from tests.webhook.conftest import (
    ACCOUNT_ID,
    CERT_PATH,
    TARGET_URL,
    archive_messages,
    changed,
    envelope_body,
    event_body,
)
from webhook import create_app

CALLBACK = "/callbacks/eventbridge"


DASHSCOPE_FINISH = b'{"source": "acs.dashscope", "type": "dashscope:System:AsyncTaskFinish"'


def spki_sha256(identity: Identity) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo of ``identity``'s certificate (openssl-style)."""
    certificate = x509.load_pem_x509_certificate(identity.certificate_pem)
    der = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def post(client: FlaskClient, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """POST a delivery; the status and the JSON answer."""
    response = client.post(CALLBACK, data=body, headers=headers)
    return response.status_code, response.get_json(silent=True) or {}


def nothing_stored(client: redis.Redis) -> bool:
    """True when no receipt, no pending entry and no archive message exist."""
    return (
        not client.keys("asr:receipt:*")
        and not client.zcard(PENDING_KEY)
        and not client.llen("archive")
    )


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_new_event_is_stored_and_enqueued_once(
    client: FlaskClient, signer: Signer, redis_client: redis.Redis, settings: Settings, version: str
) -> None:
    """A verified new event: 200 accepted, raw body stored, receipt enqueued, one message."""
    body = event_body("task-1")
    status, answer = post(client, body, signer.headers(body, version=version))
    assert (status, answer) == (200, {"status": "accepted", "task_id": "task-1"})
    receipt = ReceiptStore(redis_client, settings.dedupe_ttl_seconds).load("task-1")
    assert receipt is not None
    assert (receipt.body, receipt.state, receipt.model) == (body, "enqueued", "paraformer-v2")
    assert receipt.event_id == json.loads(body)["id"]
    assert redis_client.zcard(PENDING_KEY) == 0
    assert archive_messages(redis_client) == [
        {"task": ARCHIVE_TASK, "args": ["task-1"], "kwargs": {}}
    ]


def test_repeat_is_duplicate(
    client: FlaskClient, signer: Signer, redis_client: redis.Redis
) -> None:
    """A redelivery of the same task_id answers duplicate and adds no message."""
    body = event_body("task-2")
    assert post(client, body, signer.headers(body))[1]["status"] == "accepted"
    again = event_body("task-2")
    status, answer = post(client, again, signer.headers(again, version="v1"))
    assert (status, answer) == (200, {"status": "duplicate", "task_id": "task-2"})
    assert len(archive_messages(redis_client)) == 1


def test_other_event_type_is_ignored(
    client: FlaskClient, signer: Signer, redis_client: redis.Redis
) -> None:
    """A verified event of another type answers ignored (other_type) and stores nothing."""
    body = event_body("task-3", event_type="dashscope:System:SomethingElse")
    status, answer = post(client, body, signer.headers(body))
    assert (status, answer) == (200, {"status": "ignored", "reason": "other_type"})
    assert nothing_stored(redis_client)


@pytest.mark.parametrize(
    "api_key",
    [
        "apikey:v1:aigc:image-generation:wanx2.1-t2i-turbo",
        "apikey:v1:aigc:video-generation:wan2.2-t2v-plus",
        "apikey:v1:audio:asr:transcription:qwen3-asr-flash",
        "apikey:v1:audio:asr:transcription:fun-asr-flash-8k",
        "",
    ],
)
def test_non_transcription_model_is_ignored(
    client: FlaskClient, signer: Signer, redis_client: redis.Redis, api_key: str
) -> None:
    """A verified finish of an image, video or synchronous model: 200 ignored, nothing kept."""
    body = event_body("task-img", user_api_unique_key=api_key)
    status, answer = post(client, body, signer.headers(body))
    assert (status, answer) == (200, {"status": "ignored", "reason": "not_transcription"})
    assert nothing_stored(redis_client)


@pytest.mark.parametrize("task_status", ["SUSPENDED", "RUNNING", "PENDING"])
def test_unfinished_status_is_not_archived(
    client: FlaskClient, signer: Signer, redis_client: redis.Redis, task_status: str
) -> None:
    """A finish of an unfinished task is ignored, so its real completion is no duplicate."""
    body = event_body("task-susp", task_status=task_status)
    status, answer = post(client, body, signer.headers(body))
    assert (status, answer) == (200, {"status": "ignored", "reason": "not_finished"})
    assert nothing_stored(redis_client)
    done = event_body("task-susp")
    assert post(client, done, signer.headers(done))[1]["status"] == "accepted"


@pytest.mark.parametrize("task_status", ["CANCELED", "UNKNOWN", "FAILED", "SUCCEEDED", None])
def test_finished_statuses_are_accepted(
    client: FlaskClient, signer: Signer, task_status: str | None
) -> None:
    """Every finished status (and a missing one) is stored and enqueued."""
    body = event_body(f"task-{task_status}", task_status=task_status)
    assert post(client, body, signer.headers(body))[1]["status"] == "accepted"


@pytest.mark.parametrize(
    "fields",
    [
        {"source": "acs.ecs"},
        {"source": None},
        {"aliyunaccountid": "9999999999999999"},
        {"aliyunaccountid": None},
        {"source": "acs.ecs", "type": "ecs:Instance:StateChange"},
        {"aliyunaccountid": "9", "data": []},
    ],
)
def test_foreign_events_are_403(
    settings: Settings, signer: Signer, redis_client: redis.Redis, fields: dict[str, Any]
) -> None:
    """Another source, or an account outside EVENTBRIDGE_ACCOUNT_IDS: 403, nothing stored."""
    app = create_app(changed(settings, eventbridge_account_ids=ACCOUNT_ID))
    body = envelope_body(event_body("task-foreign"), **fields)
    status, answer = post(app.test_client(), body, signer.headers(body))
    assert (status, answer) == (403, {"error": "foreign_account"})
    assert nothing_stored(redis_client)


def test_any_account_without_account_ids(
    client: FlaskClient, signer: Signer, redis_client: redis.Redis
) -> None:
    """Without EVENTBRIDGE_ACCOUNT_IDS any DashScope account is taken; another source is not."""
    body = envelope_body(event_body("task-any"), aliyunaccountid="42")
    assert post(client, body, signer.headers(body))[1]["status"] == "accepted"
    other = envelope_body(event_body("task-any-2"), source="acs.oss")
    assert post(client, other, signer.headers(other)) == (403, {"error": "foreign_account"})


@pytest.mark.parametrize("version", ["v2", "v1"])
@pytest.mark.parametrize("token_line", [True, False])
@pytest.mark.parametrize("newline", [True, False])
def test_token_line_and_newline_forms_are_accepted(
    settings: Settings, signer: Signer, version: str, token_line: bool, newline: bool
) -> None:
    """Over HTTP, both generations take every token-line and trailing-newline form."""
    app = create_app(changed(settings, eventbridge_signature_token="tok"))
    body = event_body()
    headers = signer.headers(
        body, version=version, token="tok", token_line=token_line, trailing_newline=newline
    )
    assert post(app.test_client(), body, headers)[1]["status"] == "accepted"


@pytest.mark.parametrize(
    "times",
    [
        {"time": "2023-1-25T01:45:16.969Z", "aliyunpublishtime": "2020-11-19T21:04:42.179PRC"},
        {"time": 1700000000, "aliyunpublishtime": None},
        {"time": {"no": "time"}, "aliyunpublishtime": ""},
    ],
)
def test_malformed_times_never_reject(
    client: FlaskClient, signer: Signer, times: dict[str, Any]
) -> None:
    """The documentation's own malformed times (or none, or junk) never cause a rejection."""
    data_times = {"start_time": times["time"], "end_time": "2020-11-19T21:04:42.179PRC"}
    body = envelope_body(event_body(**data_times), **times)
    assert post(client, body, signer.headers(body))[1]["status"] == "accepted"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'"text"',
        DASHSCOPE_FINISH + b"}",
        DASHSCOPE_FINISH + b', "data": {"task_id": 7}}',
        DASHSCOPE_FINISH + b', "data": {"task_id": "../etc"}}',
        DASHSCOPE_FINISH + b', "data": {"task_id": "\\ud800"}}',
        DASHSCOPE_FINISH + b', "data": []}',
        b"\xff\xfe garbage",
        b"[" * 100_000,
    ],
)
def test_verified_but_unusable_body_is_bad_event(
    client: FlaskClient, signer: Signer, redis_client: redis.Redis, body: bytes
) -> None:
    """A verified body that is not an object with a usable data.task_id is 400 bad_event."""
    status, answer = post(client, body, signer.headers(body))
    assert (status, answer) == (400, {"error": "bad_event"})
    assert nothing_stored(redis_client)


def test_oversized_body_is_413(
    settings: Settings, signer: Signer, redis_client: redis.Redis
) -> None:
    """A body over WEBHOOK_MAX_BODY_BYTES is refused with 413 before verification."""
    app = create_app(changed(settings, webhook_max_body_bytes=4096))
    body = event_body("task-4", padding="x" * 5000)
    response = app.test_client().post(CALLBACK, data=body, headers=signer.headers(body))
    assert response.status_code == 413
    assert response.get_json() == {"error": "body_too_large"}
    assert nothing_stored(redis_client)


def test_body_at_the_cap_is_accepted(settings: Settings, signer: Signer) -> None:
    """A body of exactly WEBHOOK_MAX_BODY_BYTES is taken; the cap is inclusive."""
    app = create_app(changed(settings, webhook_max_body_bytes=4096))
    body = event_body("task-cap", padding="")
    body = event_body("task-cap", padding="x" * (4096 - len(body)))
    assert len(body) == 4096
    assert post(app.test_client(), body, signer.headers(body))[0] == 200


Mutation = Callable[
    [dict[str, str], bytes, Identity, CertificateHost], tuple[dict[str, str], bytes]
]


def _header(name: str, value: str) -> Mutation:
    def mutate(
        h: dict[str, str], b: bytes, _: Identity, __: CertificateHost
    ) -> tuple[dict[str, str], bytes]:
        return {**h, name: value}, b

    return mutate


def _drop(name: str) -> Mutation:
    def mutate(
        h: dict[str, str], b: bytes, _: Identity, __: CertificateHost
    ) -> tuple[dict[str, str], bytes]:
        return {k: v for k, v in h.items() if k != name}, b

    return mutate


def _resign(**kw: object) -> Mutation:
    def mutate(
        h: dict[str, str], b: bytes, who: Identity, host: CertificateHost
    ) -> tuple[dict[str, str], bytes]:
        target = str(kw.get("target_url", TARGET_URL))
        offset_ms = int(kw.get("offset_ms", 0))  # type: ignore[call-overload]
        signer = Signer(who, host.url(CERT_PATH), target)
        return signer.headers(b, timestamp_ms=int(time.time() * 1000) + offset_ms), b

    return mutate


REJECTIONS: dict[str, tuple[Mutation, str]] = {
    "tampered body": (lambda h, b, _, __: (h, b.replace(b"SUCCEEDED", b"FAILED")), "bad_signature"),
    "wrong target url": (_resign(target_url="https://other.example/cb"), "bad_signature"),
    "expired": (_resign(offset_ms=-61_000), "expired"),
    "future": (_resign(offset_ms=61_000), "expired"),
    "bad timestamp": (_header("X-Eventbridge-Signature-Timestamp", "soon"), "bad_timestamp"),
    "missing signature": (_drop("X-Eventbridge-Signature-V2"), "missing_signature"),
    "missing url": (_drop("X-Eventbridge-Signature-Url"), "missing_signature"),
    "garbage base64": (_header("X-Eventbridge-Signature-V2", "@@@@"), "bad_signature"),
    "untrusted url": (
        _header("X-Eventbridge-Signature-Url", "https://evil.example/cert.pem"),
        "untrusted_certificate_url",
    ),
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_signature_failures_answer_401(
    client: FlaskClient,
    signer: Signer,
    identity: Identity,
    cert_host: CertificateHost,
    redis_client: redis.Redis,
    case: str,
) -> None:
    """Each signature failure gets 401 with its contract reason and stores nothing."""
    mutate, reason = REJECTIONS[case]
    body = event_body("task-5")
    headers, sent = mutate(signer.headers(body), body, identity, cert_host)
    status, answer = post(client, sent, headers)
    assert (status, answer) == (401, {"error": reason})
    assert nothing_stored(redis_client)


@pytest.mark.parametrize("scheme_swap", [False, True])
def test_untrusted_certificate_url_is_never_fetched(
    client: FlaskClient, signer: Signer, cert_host: CertificateHost, scheme_swap: bool
) -> None:
    """A certificate URL outside the pattern (another path, or http://) is refused unfetched."""
    url = cert_host.url("/other/eventbridge.pem")
    if scheme_swap:
        url = cert_host.url(CERT_PATH).replace("https://", "http://")
    cert_host.routes["/other/eventbridge.pem"] = cert_host.routes[CERT_PATH]
    body = event_body("task-6")
    signer.cert_url = url
    status, answer = post(client, body, signer.headers(body))
    assert (status, answer) == (401, {"error": "untrusted_certificate_url"})
    assert cert_host.requests == []


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_wrong_key_is_bad_signature(
    client: FlaskClient, stranger: Identity, cert_host: CertificateHost, version: str
) -> None:
    """A delivery signed by a key other than the certificate's is 401 bad_signature."""
    body = event_body("task-7")
    headers = Signer(stranger, cert_host.url(CERT_PATH), TARGET_URL).headers(body, version=version)
    assert post(client, body, headers) == (401, {"error": "bad_signature"})


@pytest.mark.parametrize(("sent", "expected"), [("s3cret", 200), ("wrong", 401), (None, 401)])
def test_configured_token(
    settings: Settings, signer: Signer, sent: str | None, expected: int
) -> None:
    """With EVENTBRIDGE_SIGNATURE_TOKEN set, only deliveries carrying it are accepted."""
    app = create_app(changed(settings, eventbridge_signature_token="s3cret"))
    body = event_body()
    headers = signer.headers(body, token=sent)
    status, answer = post(app.test_client(), body, headers)
    assert status == expected
    if expected == 401:
        assert answer == {"error": "bad_token"}


def test_certificate_fetch_failure_is_503(
    client: FlaskClient, signer: Signer, cert_host: CertificateHost, redis_client: redis.Redis
) -> None:
    """When the trusted certificate cannot be fetched, answer 503 so EventBridge retries."""
    cert_host.routes[CERT_PATH] = Route(b"busy", 500)
    body = event_body("task-8")
    assert post(client, body, signer.headers(body)) == (503, {"error": "certificate_unavailable"})
    assert nothing_stored(redis_client)


def test_flood_naming_a_bad_certificate_fetches_it_once(
    client: FlaskClient, signer: Signer, cert_host: CertificateHost, redis_client: redis.Redis
) -> None:
    """Fifty deliveries naming a failing (pattern-matching) URL: 503 each, one fetch in all."""
    signer.cert_url = cert_host.url("/certs/gone.pem")
    for n in range(50):
        body = event_body(f"task-flood-{n}")
        assert post(client, body, signer.headers(body)) == (
            503,
            {"error": "certificate_unavailable"},
        )
    assert cert_host.requests == ["/certs/gone.pem"]
    assert nothing_stored(redis_client)


def test_unpinned_key_is_401_and_counted(
    settings: Settings, signer: Signer, identity: Identity, redis_client: redis.Redis
) -> None:
    """With EVENTBRIDGE_CERT_SHA256 set to another key: 401 untrusted_certificate, key counted."""
    app = create_app(changed(settings, eventbridge_cert_sha256="ab" * 32))
    client = app.test_client()
    for _ in range(2):
        body = event_body("task-pin")
        assert post(client, body, signer.headers(body)) == (
            401,
            {"error": "untrusted_certificate"},
        )
    assert nothing_stored(redis_client)
    text = client.get("/metrics").get_data(as_text=True)
    prefix = spki_sha256(identity)[:16]
    line = f'webhook_certificate_keys_total{{fingerprint="{prefix}",trusted="false"}} 1.0'
    assert line in text


def test_pinned_key_is_accepted(settings: Settings, signer: Signer, identity: Identity) -> None:
    """With the certificate's key among the pins (colon form too), deliveries are accepted."""
    pin = spki_sha256(identity).upper()
    pins = f"{'cd' * 32},{':'.join(pin[i : i + 2] for i in range(0, 64, 2))}"
    client = create_app(changed(settings, eventbridge_cert_sha256=pins)).test_client()
    body = event_body("task-pinned")
    assert post(client, body, signer.headers(body))[1]["status"] == "accepted"
    text = client.get("/metrics").get_data(as_text=True)
    assert f'fingerprint="{pin.lower()[:16]}",trusted="true"' in text


def test_broker_down_releases_claim(
    settings: Settings, signer: Signer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A broker that refuses connections: 503 broker_unavailable fast, and the claim is undone."""
    dead = f"redis+socket://{tmp_path / 'absent.sock'}"
    app = create_app(changed(settings, celery_broker_url=dead))
    body = event_body("task-9")
    started = time.monotonic()
    status, answer = post(app.test_client(), body, signer.headers(body))
    assert (status, answer) == (503, {"error": "broker_unavailable"})
    assert time.monotonic() - started < 3.0
    assert nothing_stored(redis_client)


def test_redis_down_is_503(settings: Settings, signer: Signer, tmp_path: Path) -> None:
    """A Redis that refuses connections: 503 redis_unavailable."""
    dead = f"unix://{tmp_path / 'absent.sock'}?db=0"
    app = create_app(changed(settings, redis_url=dead))
    body = event_body("task-10")
    assert post(app.test_client(), body, signer.headers(body)) == (
        503,
        {"error": "redis_unavailable"},
    )


@pytest.mark.parametrize("host", ["attacker.example", "hooks.example.test"])
def test_host_header_never_enters_the_string_to_sign(
    client: FlaskClient, identity: Identity, cert_host: CertificateHost, host: str
) -> None:
    """Signed for the URL the request's Host names, not WEBHOOK_PUBLIC_URL: 401 bad_signature."""
    body = event_body()
    forged = Signer(identity, cert_host.url(CERT_PATH), f"http://{host}/callbacks/eventbridge")
    response = client.post(CALLBACK, data=body, headers={**forged.headers(body), "Host": host})
    assert (response.status_code, response.get_json()) == (401, {"error": "bad_signature"})
    signed = Signer(identity, cert_host.url(CERT_PATH), TARGET_URL)
    response = client.post(CALLBACK, data=body, headers={**signed.headers(body), "Host": host})
    assert response.status_code == 200


def test_one_canonical_log_line_without_secrets(
    settings: Settings, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each delivery logs one JSON line with outcome, reason, ids, model, latency; no secrets."""
    app = create_app(changed(settings, eventbridge_signature_token="tok-123"))
    body = event_body("task-11")
    headers = signer.headers(body, token="tok-123", version="v1")
    capsys.readouterr()
    post(app.test_client(), body, headers)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    deliveries = [line for line in lines if line.get("event") == "delivery"]
    assert len(deliveries) == 1
    line = deliveries[0]
    assert line["outcome"] == "accepted" and line["reason"] == ""
    assert (line["task_id"], line["model"]) == ("task-11", "paraformer-v2")
    assert line["event_id"] == json.loads(body)["id"]
    assert isinstance(line["latency_ms"], float)
    text = json.dumps(lines)
    for name, value in headers.items():
        if "Signature" in name and name != "X-Eventbridge-Signature-Url" and len(value) > 3:
            assert value not in text, name


def test_rejection_is_logged_with_reason(client: FlaskClient) -> None:
    """A rejected delivery is logged once with its reason."""
    with capture_logs() as logs:
        client.post(CALLBACK, data=b"{}")
    assert [(e["outcome"], e["reason"]) for e in logs if e["event"] == "delivery"] == [
        ("rejected", "missing_signature")
    ]


def test_metrics_count_by_outcome_and_reason(client: FlaskClient, signer: Signer) -> None:
    """/metrics counts deliveries by outcome and reason, has a histogram, no task_id label."""
    body = event_body("task-12")
    post(client, body, signer.headers(body))
    post(client, body, {})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'webhook_deliveries_total{outcome="accepted",reason=""} 1.0' in text
    assert 'webhook_deliveries_total{outcome="rejected",reason="missing_signature"} 1.0' in text
    assert 'webhook_delivery_handling_seconds_count{outcome="accepted"} 1.0' in text
    assert "task_id" not in text and "task-12" not in text


def test_livez_and_readyz_pass(client: FlaskClient) -> None:
    """/livez and /readyz answer 200 health+json with status pass when Redis and broker answer."""
    for path in ("/livez", "/readyz"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.content_type == "application/health+json"
        assert response.get_json()["status"] == "pass"


@pytest.mark.parametrize("field", ["redis_url", "celery_broker_url"])
def test_readyz_fails_when_a_dependency_is_down(
    settings: Settings, tmp_path: Path, field: str
) -> None:
    """/readyz is 503 status fail when Redis or the broker does not answer; /livez stays 200."""
    dead = f"unix://{tmp_path / 'absent.sock'}?db=0"
    if field == "celery_broker_url":
        dead = f"redis+socket://{tmp_path / 'absent.sock'}"
    client = create_app(changed(settings, **{field: dead})).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.content_type == "application/health+json"
    assert response.get_json()["status"] == "fail"
    assert client.get("/livez").status_code == 200
