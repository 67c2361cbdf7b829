"""EventBridge pushes from the sandbox: event shape, signatures, retries, duplicates, drops."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sandbox.server import Sandbox
from tests.fixtures.sandbox import CallbackReceiver, MediaServer, wait_for
from tests.sandbox.verifier import fetch_public_key, verify
from webhook.certificates import CertificateCache
from webhook.signature import verify_delivery

HEADERS = {"Authorization": "Bearer sk-sandbox", "X-DashScope-Async": "enable"}
http = httpx.Client()  # one client for the module: building a TLS context per call is slow


def submit(box: Sandbox, model: str, urls: list[str]) -> str:
    """Submit ``urls``; the task id."""
    body: dict[str, Any] = {"model": model, "input": {"file_urls": urls}, "parameters": {}}
    if model.startswith("qwen"):
        body["input"] = {"file_url": urls[0]}
    answer = http.post(
        f"{box.api_url}/services/audio/asr/transcription", json=body, headers=HEADERS
    )
    task_id: str = answer.json()["output"]["task_id"]
    return task_id


def bodies(receiver: CallbackReceiver, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    wait_for(lambda: len(receiver.requests) >= count, timeout=timeout)
    return [json.loads(body) for _, body in receiver.requests]


def recorded(sandbox: Sandbox, count: int) -> list[dict[str, Any]]:
    """The sandbox's delivery records, once there are ``count`` of them."""
    state = wait_for(lambda: len(sandbox.state()["deliveries"]) >= count and sandbox.state())
    deliveries: list[dict[str, Any]] = state["deliveries"]
    return deliveries


@pytest.fixture
def box(
    make_sandbox: Callable[..., Sandbox], callback_receiver: CallbackReceiver
) -> Callable[..., Sandbox]:
    """A sandbox factory whose callbacks go to the receiver."""
    return lambda **changes: make_sandbox(callback_url=callback_receiver.url, **changes)


def test_event_is_complete_async_task_finish(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver, media_server: MediaServer
) -> None:
    """The pushed event has the CloudEvents envelope, the model in the key and the results."""
    sandbox = box()
    urls = [media_server.url_for("hello.wav"), media_server.url_for("missing.wav")]
    task_id = submit(sandbox, "paraformer-v2", urls)
    (event,) = bodies(callback_receiver, 1)
    assert event["source"] == "acs.dashscope" and event["specversion"] == "1.0"
    assert event["type"] == "dashscope:System:AsyncTaskFinish"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["time"])
    assert event["aliyuneventbusname"] == "default" and event["aliyunregionid"] == "cn-beijing"
    data = event["data"]
    assert data["task_id"] == task_id and data["task_status"] == "SUCCEEDED"
    assert data["user_api_unique_key"].rsplit(":", 1)[-1] == "paraformer-v2"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", data["end_time"])
    assert data["contain_result"] is True
    results = data["output_result"]["output"]["results"]
    assert [r["subtask_status"] for r in results] == ["SUCCEEDED", "FAILED"]
    assert http.get(results[0]["transcription_url"]).json()["file_url"] == urls[0]


def test_qwen_event_carries_single_result(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver, media_server: MediaServer
) -> None:
    """A Qwen filetrans event carries output_result.output.result.transcription_url."""
    sandbox = box()
    submit(sandbox, "qwen3-asr-flash-filetrans", [media_server.url_for("meeting.opus")])
    (event,) = bodies(callback_receiver, 1)
    link = event["data"]["output_result"]["output"]["result"]["transcription_url"]
    assert http.get(link).json()["audio_info"]["format"] == "opus"


@pytest.mark.parametrize(
    ("version", "changes", "form"),
    [
        ("v2", {}, "plain+newline"),
        ("v2", {"signature_token": "t0k", "sign_token_line": True}, "token+newline"),
        ("v2", {"signature_token": "t0k", "sign_token_line": False}, "plain+newline"),
        ("v2", {"sign_trailing_newline": False}, "plain"),
        ("v1", {}, "plain+newline"),
        ("v1", {"signature_token": "t0k", "sign_trailing_newline": False}, "token"),
    ],
)
def test_pushes_verify_with_test_verifier(
    box: Callable[..., Sandbox],
    callback_receiver: CallbackReceiver,
    media_server: MediaServer,
    version: str,
    changes: dict[str, Any],
    form: str,
) -> None:
    """Each signature generation and string-to-sign form verifies with an independent checker."""
    sandbox = box(signature_version=version, **changes)
    submit(sandbox, "fun-asr", [media_server.url_for("hello.wav")])
    bodies(callback_receiver, 1)
    headers, body = callback_receiver.requests[0]
    assert headers["x-eventbridge-signature-url"] == sandbox.cert_url
    assert re.fullmatch(sandbox.cert_url_regex, sandbox.cert_url)
    assert abs(int(headers["x-eventbridge-signature-timestamp"]) - time.time() * 1000) < 10_000
    key = fetch_public_key(sandbox.cert_url)
    assert verify(callback_receiver.url, headers, body, key) == form
    with pytest.raises(AssertionError):
        verify(callback_receiver.url + "x", headers, body, key)
    with pytest.raises(AssertionError):
        verify(callback_receiver.url, headers, body.replace(b"SUCCEEDED", b"FAILED"), key)


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_pushes_verify_with_webhook_verifier(
    box: Callable[..., Sandbox],
    callback_receiver: CallbackReceiver,
    media_server: MediaServer,
    version: str,
) -> None:
    """The webhook's verifier accepts the sandbox's pushes, given the sandbox's cert regex."""
    sandbox = box(signature_version=version, signature_token="t0k")
    submit(sandbox, "fun-asr", [media_server.url_for("hello.wav")])
    bodies(callback_receiver, 1)
    headers, body = callback_receiver.requests[0]
    keys = CertificateCache(re.compile(sandbox.cert_url_regex), http, ttl_seconds=60)
    generation = verify_delivery(
        headers,
        body,
        target_url=callback_receiver.url,
        keys=keys,
        now_ms=int(time.time() * 1000),
        max_skew_ms=60_000,
        token="t0k",
    )
    assert generation == version


def test_non_2xx_answers_are_retried_with_backoff(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver, media_server: MediaServer
) -> None:
    """Non-2xx answers are retried after 0.1, 0.2, 0.4 s (doubling), until a 2xx."""
    callback_receiver.statuses.extend([503, 500, 404])
    sandbox = box(retry_base_seconds=0.1, retry_max_seconds=5)
    submit(sandbox, "fun-asr", [media_server.url_for("hello.wav")])
    events = bodies(callback_receiver, 4)
    assert len({e["id"] for e in events}) == 1
    deliveries = recorded(sandbox, 4)
    assert [d["status_code"] for d in deliveries] == [503, 500, 404, 200]
    assert [d["attempt"] for d in deliveries] == [1, 2, 3, 4]
    assert deliveries[-1]["answer"] == {"status": "accepted"}
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(deliveries)]
    for gap, nominal in zip(gaps, [0.1, 0.2, 0.4], strict=True):
        assert gap >= nominal - 0.01
    stamps = [int(h["x-eventbridge-signature-timestamp"]) for h, _ in callback_receiver.requests]
    assert stamps == sorted(stamps) and stamps[0] < stamps[-1]


def test_retries_stop_after_max_attempts(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver, media_server: MediaServer
) -> None:
    """A target that never answers 2xx is tried retry_max_attempts times, then given up."""
    callback_receiver.statuses.extend([500] * 10)
    sandbox = box(retry_base_seconds=0.02, retry_max_attempts=3)
    submit(sandbox, "fun-asr", [media_server.url_for("hello.wav")])
    bodies(callback_receiver, 3)
    time.sleep(0.3)
    assert len(callback_receiver.requests) == 3


def test_unreachable_target_is_retried(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer
) -> None:
    """A connection failure is recorded without a status and retried."""
    sandbox = make_sandbox(callback_url="http://127.0.0.1:9/cb", retry_max_attempts=2)
    submit(sandbox, "fun-asr", [media_server.url_for("hello.wav")])
    deliveries = recorded(sandbox, 2)
    assert [d["status_code"] for d in deliveries] == [None, None]
    assert all(d["error"] for d in deliveries)


def test_duplicates_are_spread_copies_with_own_ids(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver, media_server: MediaServer
) -> None:
    """With duplicates=2 the same task is announced three times, spread in time, new ids."""
    sandbox = box(duplicates=2, duplicate_spread_seconds=0.4)
    task_id = submit(sandbox, "fun-asr", [media_server.url_for("hello.wav")])
    events = bodies(callback_receiver, 3)
    assert {e["data"]["task_id"] for e in events} == {task_id}
    assert len({e["id"] for e in events}) == 3
    deliveries = recorded(sandbox, 3)
    assert deliveries[-1]["at"] - deliveries[0]["at"] >= 0.35


def test_delivery_delay_is_applied(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver, media_server: MediaServer
) -> None:
    """The first push waits delivery_delay_seconds after the task ends."""
    sandbox = box(delivery_delay_seconds=0.5)
    task_id = submit(sandbox, "fun-asr", [media_server.url_for("hello.wav")])
    (delivery,) = recorded(sandbox, 1)
    assert delivery["at"] - sandbox.state()["tasks"][task_id]["ended_at"] >= 0.45


def test_drop_fraction_drops_that_share_of_tasks(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver, media_server: MediaServer
) -> None:
    """With drop_fraction=0.5 about half of 20 tasks get no callback, and the state says which."""
    sandbox = box(drop_fraction=0.5, submit_rps={"fun-asr": 100})
    tasks = {submit(sandbox, "fun-asr", [media_server.url_for("weather.mp3")]) for _ in range(20)}

    def settled() -> dict[str, Any] | None:
        state = sandbox.state()
        return state if len(state["dropped"]) + len(callback_receiver.requests) == 20 else None

    state = wait_for(settled)
    announced = {e["data"]["task_id"] for e in bodies(callback_receiver, 0)}
    assert 3 <= len(state["dropped"]) <= 17
    assert announced | set(state["dropped"]) == tasks
    assert not announced & set(state["dropped"])


def test_fail_fraction_fails_that_share_of_subtasks(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver, media_server: MediaServer
) -> None:
    """With fail_fraction=0.5 about half of 40 files fail with the configured code."""
    sandbox = box(fail_fraction=0.5, fail_code="InternalError.Test")
    urls = [media_server.url_for("hello.wav")] * 40
    submit(sandbox, "fun-asr", urls)
    (event,) = bodies(callback_receiver, 1)
    results = event["data"]["output_result"]["output"]["results"]
    failed = [r for r in results if r["subtask_status"] == "FAILED"]
    assert 8 <= len(failed) <= 32
    assert {r["code"] for r in failed} == {"InternalError.Test"}


def test_result_padding_inflates_result_files(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver, media_server: MediaServer
) -> None:
    """result_padding_bytes makes each result file at least that much larger, still valid JSON."""
    sandbox = box(result_padding_bytes=3_000_000)
    submit(sandbox, "fun-asr", [media_server.url_for("hello.wav")])
    (event,) = bodies(callback_receiver, 1)
    link = event["data"]["output_result"]["output"]["results"][0]["transcription_url"]
    content = http.get(link).content
    assert len(content) > 3_000_000
    assert json.loads(content)["transcripts"][0]["text"]
