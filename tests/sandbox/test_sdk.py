"""The official ``dashscope`` SDK uses the sandbox as if it were DashScope."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

import dashscope
import httpx
import pytest
from dashscope.audio.asr import Transcription

from sandbox.server import Sandbox
from tests.fixtures.sandbox import MediaServer


@pytest.fixture
def sdk_sandbox(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """The sandbox, with the SDK's base URL pointed at it."""
    monkeypatch.setattr(dashscope, "base_http_api_url", sandbox.api_url)
    return sandbox


@pytest.mark.parametrize("model", ["fun-asr", "paraformer-v2", "paraformer-8k-v2"])
def test_sdk_async_call_then_wait(
    sdk_sandbox: Sandbox, media_server: MediaServer, model: str
) -> None:
    """Transcription.async_call then wait gives SUCCEEDED with documented result files."""
    urls = [media_server.url_for("hello.wav"), media_server.url_for("numbers.m4a")]
    submitted = Transcription.async_call(
        model=model, file_urls=urls, api_key="sk-sandbox", language_hints=["en"]
    )
    assert submitted.status_code == HTTPStatus.OK
    assert submitted.output.task_status == "PENDING"
    done = Transcription.wait(task=submitted.output.task_id, api_key="sk-sandbox")
    assert done.status_code == HTTPStatus.OK
    assert done.output.task_status == "SUCCEEDED"
    assert done.output["task_metrics"]["SUCCEEDED"] == 2
    stored = sdk_sandbox.state()["tasks"][submitted.output.task_id]
    assert stored["model"] == model and stored["parameters"] == {"language_hints": ["en"]}
    for entry in done.output["results"]:
        document = httpx.get(entry["transcription_url"]).json()
        assert document["file_url"] == entry["file_url"]
        assert document["properties"]["original_duration_in_milliseconds"] > 3000
        words = document["transcripts"][0]["sentences"][0]["words"]
        assert {"begin_time", "end_time", "text", "punctuation"} <= set(words[0])


def test_sdk_fetch_reports_progress_and_unknown(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transcription.fetch sees PENDING right after submission and UNKNOWN for a made-up id."""
    box = make_sandbox(pending_seconds=5)
    monkeypatch.setattr(dashscope, "base_http_api_url", box.api_url)
    submitted = Transcription.async_call(
        model="fun-asr", file_urls=[media_server.url_for("hello.wav")], api_key="sk-sandbox"
    )
    fetched = Transcription.fetch(task=submitted.output.task_id, api_key="sk-sandbox")
    assert fetched.output.task_status == "PENDING"
    assert fetched.output["task_metrics"]["TOTAL"] == 1
    unknown = Transcription.fetch(task="00000000-0000-0000-0000-000000000000", api_key="sk-sandbox")
    assert unknown.output.task_status == "UNKNOWN"


def test_sdk_sees_wrong_key_as_invalid_api_key(
    sdk_sandbox: Sandbox, media_server: MediaServer
) -> None:
    """A wrong API key comes back to the SDK as 401 InvalidApiKey."""
    answer = Transcription.async_call(
        model="fun-asr", file_urls=[media_server.url_for("hello.wav")], api_key="sk-wrong"
    )
    assert answer.status_code == HTTPStatus.UNAUTHORIZED
    assert answer.code == "InvalidApiKey"


def test_sdk_partial_failure_keeps_batch_succeeded(
    sdk_sandbox: Sandbox, media_server: MediaServer
) -> None:
    """Through the SDK a missing file is a FAILED subtask in a SUCCEEDED task."""
    urls = [media_server.url_for("weather.mp3"), media_server.url_for("gone.wav")]
    submitted = Transcription.async_call(model="fun-asr", file_urls=urls, api_key="sk-sandbox")
    done = Transcription.wait(task=submitted, api_key="sk-sandbox")
    statuses = [r["subtask_status"] for r in done.output["results"]]
    assert done.output.task_status == "SUCCEEDED" and statuses == ["SUCCEEDED", "FAILED"]
    assert done.output["results"][1]["code"] == "InvalidFile.DownloadFailed"
