"""Account-wide errors, lost submit answers and ``msg`` error bodies, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from http import HTTPStatus

import dashscope
import httpx
import pytest
from dashscope.audio.asr import Transcription

from sandbox.faults import lost_answer
from sandbox.server import Sandbox
from tests.fixtures.sandbox import CallbackReceiver, MediaServer, wait_for

HEADERS = {"Authorization": "Bearer sk-sandbox", "X-DashScope-Async": "enable"}
http = httpx.Client()  # one client for the module: building a TLS context per call is slow


def submit(box: Sandbox, url: str, client: httpx.Client = http) -> httpx.Response:
    body = {"model": "fun-asr", "input": {"file_urls": [url]}, "parameters": {}}
    return client.post(
        f"{box.api_url}/services/audio/asr/transcription", json=body, headers=HEADERS
    )


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("arrearage", 403, "Arrearage"), ("allocation-quota", 429, "Throttling.AllocationQuota")],
)
def test_account_error_fails_every_call_then_clears(
    make_sandbox: Callable[..., Sandbox],
    media_server: MediaServer,
    kind: str,
    status: int,
    code: str,
) -> None:
    """Configured at start, the error answers submit, query, list and cancel, then lifts."""
    box = make_sandbox(account_error=kind, account_error_seconds=0.6)
    answers = [
        submit(box, media_server.url_for("hello.wav")),
        http.get(f"{box.api_url}/tasks/x", headers=HEADERS),
        http.get(f"{box.api_url}/tasks", headers=HEADERS),
        http.post(f"{box.api_url}/tasks/x/cancel", headers=HEADERS),
    ]
    assert {(a.status_code, a.json()["code"]) for a in answers} == {(status, code)}
    assert box.state()["tasks"] == {} and box.state()["account_error"] == kind
    time.sleep(0.7)
    assert submit(box, media_server.url_for("hello.wav")).status_code == 200
    assert box.state()["account_error"] is None


def test_account_error_can_be_set_in_process_and_over_http(
    sandbox: Sandbox, media_server: MediaServer
) -> None:
    """set_account_error and POST /_sandbox/account-error start and stop the error window."""
    url = media_server.url_for("hello.wav")
    sandbox.service.set_account_error("arrearage", 30)
    assert submit(sandbox, url).json()["code"] == "Arrearage"
    control = f"{sandbox.url}/_sandbox/account-error"
    assert http.post(control, json={"kind": "allocation-quota", "seconds": 30}).status_code == 200
    assert submit(sandbox, url).json()["code"] == "Throttling.AllocationQuota"
    assert http.post(control, json={"kind": None, "seconds": 0}).status_code == 200
    assert submit(sandbox, url).status_code == 200
    assert http.post(control, json={"kind": "broke"}).status_code == 400


def test_wrong_key_is_still_invalid_api_key_during_account_error(sandbox: Sandbox) -> None:
    """The key is checked before the account: a wrong key answers 401 even while in arrears."""
    sandbox.service.set_account_error("arrearage", 30)
    answer = http.get(f"{sandbox.api_url}/tasks/x", headers={"Authorization": "Bearer nope"})
    assert answer.status_code == 401


def test_sdk_sees_arrearage(
    sandbox: Sandbox, media_server: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the SDK an overdue account is 403 Arrearage on submit."""
    monkeypatch.setattr(dashscope, "base_http_api_url", sandbox.api_url)
    sandbox.service.set_account_error("arrearage", 30)
    answer = Transcription.async_call(
        model="fun-asr", file_urls=[media_server.url_for("hello.wav")], api_key="sk-sandbox"
    )
    assert answer.status_code == HTTPStatus.FORBIDDEN and answer.code == "Arrearage"


def test_dropped_submit_answer_still_creates_a_task_that_is_announced(
    make_sandbox: Callable[..., Sandbox],
    media_server: MediaServer,
    callback_receiver: CallbackReceiver,
) -> None:
    """mode drop: the connection closes unanswered, yet the task runs and its event is sent."""
    box = make_sandbox(
        callback_url=callback_receiver.url,
        ambiguous_submit_fraction=1.0,
        ambiguous_submit_mode="drop",
    )
    with pytest.raises(httpx.RemoteProtocolError):
        submit(box, media_server.url_for("hello.wav"))
    (record,) = box.state()["submissions"]
    assert record["status"] == 200 and record["answer_lost"] == "drop"
    wait_for(lambda: callback_receiver.requests)
    assert box.state()["tasks"][record["task_id"]]["status"] == "SUCCEEDED"
    assert http.get(f"{box.url}/livez").status_code == 200


def test_delayed_submit_answer_outlasts_the_client_timeout(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer
) -> None:
    """mode delay: the answer comes after the hold; a client with a shorter timeout gives up."""
    box = make_sandbox(
        ambiguous_submit_fraction=1.0,
        ambiguous_submit_mode="delay",
        ambiguous_submit_delay_seconds=0.8,
    )
    with httpx.Client(timeout=0.3) as impatient, pytest.raises(httpx.ReadTimeout):
        submit(box, media_server.url_for("hello.wav"), impatient)
    started = time.monotonic()
    late = submit(box, media_server.url_for("hello.wav"))
    assert late.status_code == 200 and time.monotonic() - started >= 0.75
    records = box.state()["submissions"]
    assert [r["answer_lost"] for r in records] == ["delay", "delay"]
    wait_for(lambda: all(t["status"] == "SUCCEEDED" for t in box.state()["tasks"].values()))


def test_ambiguous_fraction_is_deterministic_and_proportional(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    """The choice depends only on seed and submission number; about F of 400 are lost, both ways."""
    box = make_sandbox(ambiguous_submit_fraction=0.25)
    fates = [lost_answer(box.config, n) for n in range(400)]
    assert fates == [lost_answer(box.config, n) for n in range(400)]
    assert 60 <= sum(f is not None for f in fates) <= 140
    assert {"drop", "delay"} <= set(fates)


def test_error_bodies_use_msg_for_that_fraction(
    make_sandbox: Callable[..., Sandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    """error_msg_fraction=1: errors say msg and the SDK still reads it; by default: message."""
    box = make_sandbox(error_msg_fraction=1.0)
    answer = http.get(f"{box.api_url}/tasks/x")
    assert set(answer.json()) == {"request_id", "code", "msg"}
    monkeypatch.setattr(dashscope, "base_http_api_url", box.api_url)
    fetched = Transcription.fetch(task="x", api_key="sk-wrong")
    assert fetched.code == "InvalidApiKey" and fetched.message == "Invalid API-key provided."
    plain = make_sandbox()
    assert set(http.get(f"{plain.api_url}/tasks/x").json()) == {"request_id", "code", "message"}
