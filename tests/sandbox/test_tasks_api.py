"""``GET /tasks`` (list) and ``POST /tasks/{id}/cancel`` over HTTP, and through the SDK."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import dashscope
import httpx
import pytest
from dashscope.audio.asr import Transcription

from sandbox.server import Sandbox
from tests.fixtures.sandbox import CallbackReceiver, MediaServer, wait_for

HEADERS = {"Authorization": "Bearer sk-sandbox", "X-DashScope-Async": "enable"}
CHINA = dt.timezone(dt.timedelta(hours=8))
http = httpx.Client()  # one client for the module: building a TLS context per call is slow


def stamp(epoch: float) -> str:
    """``epoch`` as the list API's ``YYYYMMDDhhmmss`` in China time."""
    return dt.datetime.fromtimestamp(epoch, CHINA).strftime("%Y%m%d%H%M%S")


def submit(box: Sandbox, url: str, model: str = "fun-asr") -> str:
    body = {"model": model, "input": {"file_urls": [url]}, "parameters": {}}
    answer = http.post(
        f"{box.api_url}/services/audio/asr/transcription", json=body, headers=HEADERS
    )
    task_id: str = answer.json()["output"]["task_id"]
    return task_id


def listing(box: Sandbox, **params: Any) -> httpx.Response:
    return http.get(f"{box.api_url}/tasks", params=params, headers=HEADERS)


def test_list_pages_every_task_once_in_a_stable_order(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer
) -> None:
    """23 tasks in pages of 10: 10, 10, 3, then empty; same order on a second pass; totals right."""
    box = make_sandbox(pending_seconds=60, submit_rps={"fun-asr": 100})
    url = media_server.url_for("hello.wav")
    ids = [submit(box, url) for _ in range(23)]
    window = {"start_time": stamp(time.time() - 60), "end_time": stamp(time.time() + 1)}

    def walk() -> list[str]:
        seen: list[str] = []
        for page_no in (1, 2, 3, 4):
            body = listing(box, page_no=page_no, page_size=10, **window).json()
            assert (body["total"], body["total_page"]) == (23, 3)
            assert (body["page_no"], body["page_size"]) == (page_no, 10)
            assert len(body["data"]) == [10, 10, 3, 0][page_no - 1]
            seen += [record["task_id"] for record in body["data"]]
        return seen

    first = walk()
    assert sorted(first) == sorted(ids) and walk() == first


def test_list_record_shape(sandbox: Sandbox, media_server: MediaServer) -> None:
    """A list entry has the SDK's AsyncTaskInfo fields, the status twice, times in epoch ms."""
    before = time.time()
    task_id = submit(sandbox, media_server.url_for("hello.wav"), "paraformer-v2")
    wait_for(lambda: listing(sandbox, status="SUCCEEDED").json()["total"] == 1, interval=0.06)
    body = listing(sandbox).json()
    assert set(body) == {"request_id", "data", "total", "total_page", "page_no", "page_size"}
    (record,) = body["data"]
    assert record["task_id"] == task_id and record["model_name"] == "paraformer-v2"
    assert record["status"] == record["task_status"] == "SUCCEEDED"
    assert record["user_api_unique_key"] == "apikey:v1:audio:asr:transcription:paraformer-v2"
    assert record["region"] == "cn-beijing" and record["api_key_id"]
    assert before * 1000 - 1 <= record["gmt_create"] <= record["start_time"] <= record["end_time"]
    assert record["end_time"] <= time.time() * 1000


def test_list_filters_by_model_status_and_window(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer
) -> None:
    """model_name, status and the time window each narrow the list."""
    box = make_sandbox(pending_seconds=60)
    url = media_server.url_for("hello.wav")
    fun, para = submit(box, url), submit(box, url, "paraformer-v2")
    http.post(f"{box.api_url}/tasks/{fun}/cancel", headers=HEADERS)

    def ids(**params: Any) -> list[str]:
        return [r["task_id"] for r in listing(box, **params).json()["data"]]

    assert ids(model_name="paraformer-v2") == [para]
    assert ids(status="CANCELED") == [fun] and ids(status="PENDING") == [para]
    assert ids(region="cn-beijing", api_key_id="1250") == [fun, para]
    assert ids(region="ap-southeast-1") == []
    past = time.time() - 7200
    assert ids(start_time=stamp(past - 3600), end_time=stamp(past)) == []


@pytest.mark.parametrize(
    "params",
    [
        {"start_time": "2025-01-01"},
        {"start_time": "20250101000000", "end_time": "20250102000001"},
        {"start_time": "20250102000000", "end_time": "20250101000000"},
        {"page_size": "101"},
        {"page_no": "0"},
        {"status": "DONE"},
    ],
)
def test_list_refuses_bad_parameters(sandbox: Sandbox, params: dict[str, str]) -> None:
    """Bad times, a window over 24 h, out-of-range pages or an unknown status: 400."""
    answer = listing(sandbox, **params)
    assert answer.status_code == 400 and answer.json()["code"] == "InvalidParameter"


def test_list_query_and_cancel_share_one_rate_budget(make_sandbox: Callable[..., Sandbox]) -> None:
    """List, query and cancel calls count against the same per-second budget (429 Throttling)."""
    box = make_sandbox(query_qps=4)
    answers = [
        listing(box),
        http.get(f"{box.api_url}/tasks/x", headers=HEADERS),
        http.post(f"{box.api_url}/tasks/x/cancel", headers=HEADERS),
        listing(box),
        listing(box),
        http.get(f"{box.api_url}/tasks/x", headers=HEADERS),
    ]
    assert [a.status_code for a in answers] == [200, 200, 400, 200, 429, 429]
    assert answers[-2].json()["code"] == "Throttling"
    routes = [(q["route"], q["status"]) for q in box.state()["queries"]]
    assert routes[-2:] == [("list", 429), ("query", 429)]


def test_list_needs_the_api_key(sandbox: Sandbox) -> None:
    """Listing without the key answers 401 InvalidApiKey."""
    answer = http.get(f"{sandbox.api_url}/tasks")
    assert answer.status_code == 401 and answer.json()["code"] == "InvalidApiKey"


def test_running_task_cannot_be_canceled(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer
) -> None:
    """Once a task has left PENDING, cancel answers 400 UnsupportedOperation and it finishes."""
    box = make_sandbox(min_running_seconds=1.0)
    task_id = submit(box, media_server.url_for("hello.wav"))
    wait_for(lambda: box.state()["tasks"][task_id]["status"] == "RUNNING")
    answer = http.post(f"{box.api_url}/tasks/{task_id}/cancel", headers=HEADERS)
    assert answer.status_code == 400 and answer.json()["code"] == "UnsupportedOperation"
    wait_for(lambda: box.state()["tasks"][task_id]["status"] == "SUCCEEDED")


def test_canceled_task_sends_no_event_by_default(
    make_sandbox: Callable[..., Sandbox],
    media_server: MediaServer,
    callback_receiver: CallbackReceiver,
) -> None:
    """A canceled task is never announced; with event_on_cancel it is, as CANCELED."""
    quiet = make_sandbox(callback_url=callback_receiver.url, pending_seconds=0.3)
    loud = make_sandbox(
        callback_url=callback_receiver.url, pending_seconds=0.3, event_on_cancel=True
    )
    url = media_server.url_for("hello.wav")
    for box in (quiet, loud):
        task_id = submit(box, url)
        assert (
            http.post(f"{box.api_url}/tasks/{task_id}/cancel", headers=HEADERS).status_code == 200
        )
    time.sleep(0.6)
    assert quiet.state()["deliveries"] == [] and media_server.gets == []
    (delivery,) = wait_for(lambda: loud.state()["deliveries"])
    _, body = callback_receiver.requests[0]
    assert b'"task_status": "CANCELED"' in body and delivery["task_id"] == task_id


def test_suspended_task_is_queried_listed_then_runs(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer
) -> None:
    """suspend_fraction=1: a task is SUSPENDED (queried, listed, not cancelable), then ends."""
    box = make_sandbox(suspend_fraction=1.0, suspend_seconds=0.5)
    task_id = submit(box, media_server.url_for("hello.wav"))
    query = f"{box.api_url}/tasks/{task_id}"
    wait_for(
        lambda: http.get(query, headers=HEADERS).json()["output"]["task_status"] == "SUSPENDED",
        interval=0.06,
    )
    assert listing(box, status="SUSPENDED").json()["data"][0]["task_id"] == task_id
    cancel = http.post(f"{query}/cancel", headers=HEADERS)
    assert cancel.json()["code"] == "UnsupportedOperation"
    done = wait_for(
        lambda: http.get(query, headers=HEADERS).json()["output"]["task_status"] == "SUCCEEDED",
        interval=0.06,
    )
    assert done


def test_sdk_lists_and_cancels(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's Transcription.list pages the tasks; Transcription.cancel cancels a PENDING one."""
    box = make_sandbox(pending_seconds=60)
    monkeypatch.setattr(dashscope, "base_http_api_url", box.api_url)
    urls = [media_server.url_for("hello.wav")]
    tasks = [
        Transcription.async_call(model="fun-asr", file_urls=urls, api_key="sk-sandbox")
        for _ in range(3)
    ]
    canceled = Transcription.cancel(tasks[0], api_key="sk-sandbox")
    assert canceled.status_code == HTTPStatus.OK
    again = Transcription.cancel(tasks[0], api_key="sk-sandbox")
    assert again.status_code == HTTPStatus.BAD_REQUEST and again.code == "UnsupportedOperation"
    window = {"start_time": stamp(time.time() - 60), "end_time": stamp(time.time() + 1)}
    page = Transcription.list(**window, model_name="fun-asr", page_size=2, api_key="sk-sandbox")
    assert page.status_code == HTTPStatus.OK
    assert page.output["total"] == 3 and len(page.output["data"]) == 2
    last = Transcription.list(**window, page_no=2, page_size=2, api_key="sk-sandbox")
    listed = [r["task_id"] for r in page.output["data"] + last.output["data"]]
    assert sorted(listed) == sorted(t.output.task_id for t in tasks)
    pending = Transcription.list(**window, status="PENDING", api_key="sk-sandbox")
    assert pending.output["total"] == 2
