"""Retry strategies, results-free events and foreign (image/video) events, pushed for real."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sandbox.config import SandboxConfig
from sandbox.retry import next_delay
from sandbox.server import Sandbox
from tests.fixtures.sandbox import CallbackReceiver, MediaServer, wait_for
from tests.sandbox.verifier import fetch_public_key, verify

HEADERS = {"Authorization": "Bearer sk-sandbox", "X-DashScope-Async": "enable"}
http = httpx.Client()  # one client for the module: building a TLS context per call is slow


def submit(box: Sandbox, url: str) -> str:
    body = {"model": "fun-asr", "input": {"file_urls": [url]}, "parameters": {}}
    answer = http.post(
        f"{box.api_url}/services/audio/asr/transcription", json=body, headers=HEADERS
    )
    task_id: str = answer.json()["output"]["task_id"]
    return task_id


@pytest.fixture
def box(
    make_sandbox: Callable[..., Sandbox], callback_receiver: CallbackReceiver
) -> Callable[..., Sandbox]:
    """A sandbox factory whose callbacks go to the receiver."""
    return lambda **changes: make_sandbox(callback_url=callback_receiver.url, **changes)


def test_backoff_defaults_are_three_retries_ten_to_twenty_seconds_apart() -> None:
    """At the defaults, BACKOFF_RETRY waits 10-20 s (varied) three times, then gives up."""
    config = SandboxConfig(retry_strategy="backoff")
    delays = [next_delay(config, "event-1", attempt) for attempt in (1, 2, 3)]
    assert all(d is not None and 10 <= d < 20 for d in delays) and len(set(delays)) == 3
    assert next_delay(config, "event-1", 4) is None
    assert delays == [next_delay(config, "event-1", attempt) for attempt in (1, 2, 3)]


def test_exponential_defaults_retry_for_a_day() -> None:
    """At the defaults, EXPONENTIAL_DECAY_RETRY doubles from 1 s to 512 s: 176 tries, ~24 h."""
    config = SandboxConfig()
    assert config.retry_strategy == "exponential"
    delays = [next_delay(config, "e", attempt) or 0.0 for attempt in range(1, 176)]
    assert delays[:10] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] and max(delays) == 512
    assert next_delay(config, "e", 176) is None
    assert 20 * 3600 <= sum(delays) <= 26 * 3600


def test_backoff_strategy_retries_three_times_then_drops(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver, media_server: MediaServer
) -> None:
    """A target that stays down gets 4 tries in the backoff spacing, then the event is dropped."""
    callback_receiver.statuses.extend([503] * 10)
    sandbox = box(
        retry_strategy="backoff", backoff_retry_min_seconds=0.1, backoff_retry_max_seconds=0.2
    )
    task_id = submit(sandbox, media_server.url_for("hello.wav"))
    state = wait_for(lambda: sandbox.state()["abandoned"] and sandbox.state())
    (abandoned,) = state["abandoned"]
    assert abandoned["task_id"] == task_id and abandoned["attempts"] == 4
    deliveries = state["deliveries"]
    assert [d["attempt"] for d in deliveries] == [1, 2, 3, 4]
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(deliveries)]
    assert all(0.09 <= gap <= 0.4 for gap in gaps)
    time.sleep(0.5)
    assert len(callback_receiver.requests) == 4


def test_backoff_strategy_stops_at_the_first_2xx(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver, media_server: MediaServer
) -> None:
    """Two failures then a 200: three tries, nothing abandoned."""
    callback_receiver.statuses.extend([500, 502])
    sandbox = box(
        retry_strategy="backoff", backoff_retry_min_seconds=0.05, backoff_retry_max_seconds=0.1
    )
    submit(sandbox, media_server.url_for("hello.wav"))
    wait_for(lambda: len(sandbox.state()["deliveries"]) == 3)
    time.sleep(0.3)
    state = sandbox.state()
    assert [d["status_code"] for d in state["deliveries"]] == [500, 502, 200]
    assert state["abandoned"] == []


def test_exponential_strategy_records_abandoned_events(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver, media_server: MediaServer
) -> None:
    """When the exponential policy runs out of tries, the event is recorded as abandoned too."""
    callback_receiver.statuses.extend([500] * 5)
    sandbox = box(retry_base_seconds=0.02, retry_max_attempts=3)
    submit(sandbox, media_server.url_for("hello.wav"))
    (abandoned,) = wait_for(lambda: sandbox.state()["abandoned"])
    assert abandoned["attempts"] == 3


def test_events_without_results_hold_only_the_task_facts(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver, media_server: MediaServer
) -> None:
    """results_in_events=False: contain_result false, no output_result; a query has the results."""
    sandbox = box(results_in_events=False)
    task_id = submit(sandbox, media_server.url_for("hello.wav"))
    wait_for(lambda: callback_receiver.requests)
    event = json.loads(callback_receiver.requests[0][1])
    data = event["data"]
    assert data["task_id"] == task_id and data["task_status"] == "SUCCEEDED"
    assert data["contain_result"] is False and "output_result" not in data
    assert data["user_api_unique_key"].endswith(":fun-asr")
    output = http.get(f"{sandbox.api_url}/tasks/{task_id}", headers=HEADERS).json()["output"]
    assert output["results"][0]["transcription_url"]


def test_foreign_events_are_signed_image_and_video_tasks(
    box: Callable[..., Sandbox], callback_receiver: CallbackReceiver
) -> None:
    """foreign_events=3: signed events of wanx image and video tasks, also listed and queryable."""
    sandbox = box(foreign_events=3, foreign_event_interval_seconds=0.05)
    wait_for(lambda: len(callback_receiver.requests) == 3)
    key = fetch_public_key(sandbox.cert_url)
    events: list[dict[str, Any]] = []
    for headers, body in callback_receiver.requests:
        assert verify(callback_receiver.url, headers, body, key) == "plain+newline"
        events.append(json.loads(body))
    models = [e["data"]["user_api_unique_key"].rsplit(":", 1)[-1] for e in events]
    assert models == ["wanx2.1-t2i-turbo", "wanx2.1-i2v-turbo", "wanx2.1-t2i-turbo"]
    assert all(e["type"] == "dashscope:System:AsyncTaskFinish" for e in events)
    assert not any(":audio:asr:transcription:" in e["data"]["user_api_unique_key"] for e in events)
    image, video = events[0]["data"], events[1]["data"]
    assert image["contain_result"] is True and "transcription_url" not in json.dumps(image)
    assert image["output_result"]["output"]["results"][0]["url"]
    assert video["contain_result"] is False and "output_result" not in video
    listed = http.get(f"{sandbox.api_url}/tasks", headers=HEADERS).json()
    assert {r["model_name"] for r in listed["data"]} == {"wanx2.1-t2i-turbo", "wanx2.1-i2v-turbo"}
    query = http.get(f"{sandbox.api_url}/tasks/{video['task_id']}", headers=HEADERS).json()
    assert re.match(r"http://127\.0\.0\.1:\d+/", query["output"]["video_url"])
    assert http.get(query["output"]["video_url"]).status_code == 403
    assert sorted(sandbox.state()["foreign"].values()) == sorted(models)
