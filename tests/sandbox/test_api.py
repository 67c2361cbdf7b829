"""The DashScope REST surface of the sandbox: submit, query, errors, limits, result links."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sandbox.server import Sandbox
from tests.fixtures.sandbox import MediaServer, wait_for

HEADERS = {"Authorization": "Bearer sk-sandbox", "X-DashScope-Async": "enable"}
POLL = 0.06  # seconds between queries: under the 20 QPS query limit
http = httpx.Client()  # one client for the module: building a TLS context per call is slow


def submit(box: Sandbox, body: dict[str, Any], headers: dict[str, str] = HEADERS) -> httpx.Response:
    return http.post(f"{box.api_url}/services/audio/asr/transcription", json=body, headers=headers)


def query(box: Sandbox, task_id: str) -> httpx.Response:
    return http.get(f"{box.api_url}/tasks/{task_id}", headers=HEADERS)


def finished(box: Sandbox, task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = query(box, task_id).json()
        return body if body["output"]["task_status"] in ("SUCCEEDED", "FAILED") else None

    result: dict[str, Any] = wait_for(done, interval=POLL)
    return result


def test_submit_answers_task_id_and_pending(sandbox: Sandbox, media_server: MediaServer) -> None:
    """A valid submission answers 200 with request_id, output.task_id and PENDING."""
    answer = submit(
        sandbox, {"model": "fun-asr", "input": {"file_urls": [media_server.url_for("hello.wav")]}}
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["request_id"] and body["output"]["task_status"] == "PENDING"
    assert re.fullmatch(r"[0-9a-f-]{36}", body["output"]["task_id"])


def test_task_goes_pending_running_succeeded(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer
) -> None:
    """Querying shows PENDING, then RUNNING, then SUCCEEDED with results, metrics and usage."""
    box = make_sandbox(pending_seconds=0.3, min_running_seconds=0.8)
    urls = [media_server.url_for("hello.wav"), media_server.url_for("weather.mp3")]
    task_id = submit(box, {"model": "paraformer-v2", "input": {"file_urls": urls}}).json()[
        "output"
    ]["task_id"]
    seen = [query(box, task_id).json()["output"]["task_status"]]
    wait_for(
        lambda: query(box, task_id).json()["output"]["task_status"] == "RUNNING", interval=POLL
    )
    seen.append("RUNNING")
    output = finished(box, task_id)
    seen.append(output["output"]["task_status"])
    assert seen == ["PENDING", "RUNNING", "SUCCEEDED"]
    assert output["output"]["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}
    assert [r["file_url"] for r in output["output"]["results"]] == urls
    assert output["usage"]["duration"] >= 8
    assert {"submit_time", "scheduled_time", "end_time"} <= set(output["output"])


def test_unreachable_file_fails_its_subtask_only(
    sandbox: Sandbox, media_server: MediaServer
) -> None:
    """A URL that cannot be fetched gives InvalidFile.DownloadFailed while the batch SUCCEEDS."""
    urls = [media_server.url_for("hello.wav"), media_server.url_for("missing.wav")]
    task_id = submit(sandbox, {"model": "fun-asr", "input": {"file_urls": urls}}).json()["output"][
        "task_id"
    ]
    output = finished(sandbox, task_id)["output"]
    assert output["task_status"] == "SUCCEEDED"
    bad = output["results"][1]
    assert bad["subtask_status"] == "FAILED" and bad["code"] == "InvalidFile.DownloadFailed"
    assert "transcription_url" not in bad


def test_all_files_failing_fails_the_task(sandbox: Sandbox, media_server: MediaServer) -> None:
    """When no file succeeds the task is FAILED and carries a code and message."""
    media_server.add("junk.wav", b"not audio at all" * 100)
    urls = [media_server.url_for("junk.wav")]
    task_id = submit(sandbox, {"model": "fun-asr", "input": {"file_urls": urls}}).json()["output"][
        "task_id"
    ]
    output = finished(sandbox, task_id)["output"]
    assert output["task_status"] == "FAILED"
    assert output["code"] == "InvalidFile.DecodeFailed"
    assert output["results"][0]["subtask_status"] == "FAILED"


def test_empty_file_fails_with_length_error(sandbox: Sandbox, media_server: MediaServer) -> None:
    """An empty file fails its subtask with InvalidFile.AudioLengthError."""
    urls = [media_server.add("empty.wav", b""), media_server.url_for("hello.wav")]
    task_id = submit(sandbox, {"model": "fun-asr", "input": {"file_urls": urls}}).json()["output"][
        "task_id"
    ]
    assert finished(sandbox, task_id)["output"]["results"][0]["code"] == (
        "InvalidFile.AudioLengthError"
    )


def test_body_that_is_not_json_is_invalid_parameter(sandbox: Sandbox) -> None:
    """A submit body that is not JSON answers 400 InvalidParameter."""
    answer = http.post(
        f"{sandbox.api_url}/services/audio/asr/transcription", content=b"{oops", headers=HEADERS
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == "InvalidParameter"


def test_pending_task_can_be_canceled_once(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer
) -> None:
    """POST /tasks/{id}/cancel makes a PENDING task CANCELED for good; a second cancel is 400."""
    box = make_sandbox(pending_seconds=0.3)
    body = {"model": "fun-asr", "input": {"file_urls": [media_server.url_for("hello.wav")]}}
    task_id = submit(box, body).json()["output"]["task_id"]
    cancel = f"{box.api_url}/tasks/{task_id}/cancel"
    assert http.post(cancel, headers=HEADERS).status_code == 200
    again = http.post(cancel, headers=HEADERS)
    assert again.status_code == 400 and again.json()["code"] == "UnsupportedOperation"
    unknown = http.post(f"{box.api_url}/tasks/nope/cancel", headers=HEADERS)
    assert unknown.status_code == 400 and unknown.json()["code"] == "UnsupportedOperation"
    time.sleep(0.5)
    output = query(box, task_id).json()["output"]
    assert output["task_status"] == "CANCELED"
    assert output["results"][0]["subtask_status"] == "CANCELED"
    assert media_server.gets == []


def test_unknown_task_is_unknown(sandbox: Sandbox) -> None:
    """Querying an id that was never issued answers 200 with task_status UNKNOWN."""
    answer = query(sandbox, "no-such-task")
    assert answer.status_code == 200
    assert answer.json()["output"] == {"task_id": "no-such-task", "task_status": "UNKNOWN"}


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (
            {"model": "fun-asr", "input": {"file_urls": ["http://x/a.wav"]}},
            {},
            401,
            "InvalidApiKey",
        ),
        (
            {"model": "fun-asr", "input": {"file_urls": ["http://x/a.wav"]}},
            {"Authorization": "Bearer sk-sandbox"},
            403,
            "AccessDenied",
        ),
        ({"model": "whisper", "input": {"file_urls": ["http://x/a"]}}, HEADERS, 400, None),
        ({"model": "fun-asr-flash-8k", "input": {"file_urls": ["http://x/a"]}}, HEADERS, 400, None),
        ({"model": "fun-asr", "input": {"file_urls": []}}, HEADERS, 400, None),
        ({"model": "fun-asr", "input": {"file_urls": ["file:///etc/passwd"]}}, HEADERS, 400, None),
        ({"model": "fun-asr", "input": {"file_urls": ["http://x/a"] * 101}}, HEADERS, 400, None),
        (
            {"model": "qwen3-asr-flash-filetrans", "input": {"file_urls": ["http://x/a"]}},
            HEADERS,
            400,
            None,
        ),
        (
            {
                "model": "fun-asr",
                "input": {"file_urls": ["http://x/a"]},
                "parameters": {"channel_id": 0},
            },
            HEADERS,
            400,
            None,
        ),
        (
            {
                "model": "fun-asr",
                "input": {"file_urls": ["http://x/a"]},
                "parameters": {"diarization_enabled": "yes"},
            },
            HEADERS,
            400,
            None,
        ),
        (
            {
                "model": "fun-asr",
                "input": {"file_urls": ["http://x/a"]},
                "parameters": {"speaker_count": 1},
            },
            HEADERS,
            400,
            None,
        ),
    ],
)
def test_bad_submissions_get_dashscope_errors(
    sandbox: Sandbox, body: dict[str, Any], headers: dict[str, str], status: int, code: str | None
) -> None:
    """Bad keys, a missing async header, unknown models, bad inputs or parameters are refused."""
    answer = submit(sandbox, body, headers)
    assert answer.status_code == status
    error = answer.json()
    assert set(error) == {"request_id", "code", "message"}
    assert error["code"] == (code or "InvalidParameter")
    assert sandbox.state()["tasks"] == {}


def test_qwen_filetrans_output_and_result_shape(
    sandbox: Sandbox, media_server: MediaServer
) -> None:
    """Qwen filetrans takes input.file_url and answers output.result and usage.seconds."""
    url = media_server.url_for("numbers.m4a")
    body = {
        "model": "qwen3-asr-flash-filetrans",
        "input": {"file_url": url},
        "parameters": {"enable_words": True, "language": "en"},
    }
    task_id = submit(sandbox, body).json()["output"]["task_id"]
    answer = finished(sandbox, task_id)
    assert answer["output"]["result"]["file_url"] == url
    assert answer["usage"]["seconds"] >= 3
    document = http.get(answer["output"]["result"]["transcription_url"]).json()
    assert document["audio_info"] == {"format": "aac", "sample_rate": 16000}
    sentence = document["transcripts"][0]["sentences"][0]
    assert sentence["language"] == "en" and sentence["emotion"] and sentence["words"]


def test_qwen_download_failure_fails_task_with_code(
    sandbox: Sandbox, media_server: MediaServer
) -> None:
    """A Qwen task whose one file cannot be fetched is FAILED with output.code and no result."""
    body = {"model": "qwen3-asr-flash-filetrans", "input": {"file_url": media_server.url_for("x")}}
    output = finished(sandbox, submit(sandbox, body).json()["output"]["task_id"])["output"]
    assert output["task_status"] == "FAILED"
    assert output["code"] == "InvalidFile.DownloadFailed" and "result" not in output


def test_result_links_are_signed_and_refused_when_tampered(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer
) -> None:
    """A result link serves JSON; a changed signature, expiry or path answers 403."""
    box = make_sandbox()
    urls = [media_server.url_for("hello.wav")]
    task_id = submit(box, {"model": "fun-asr", "input": {"file_urls": urls}}).json()["output"][
        "task_id"
    ]
    link = finished(box, task_id)["output"]["results"][0]["transcription_url"]
    assert re.fullmatch(box.result_url_regex, link)
    assert {"Expires", "Signature"} <= set(httpx.URL(link).params)
    assert http.get(link).status_code == 200
    expires = httpx.URL(link).params["Expires"]
    assert (
        http.get(link.replace(f"Expires={expires}", f"Expires={int(expires) + 1}")).status_code
        == 403
    )
    assert http.get(link.replace("Signature=", "Signature=A")).status_code == 403
    assert http.get(link.replace("/0000.json", "/0001.json")).status_code == 403


def test_result_files_serve_byte_ranges(sandbox: Sandbox, media_server: MediaServer) -> None:
    """A Range request on a result link answers 206 with exactly those bytes."""
    body = {"model": "fun-asr", "input": {"file_urls": [media_server.url_for("hello.wav")]}}
    output = finished(sandbox, submit(sandbox, body).json()["output"]["task_id"])["output"]
    link = output["results"][0]["transcription_url"]
    whole = http.get(link).content
    part = http.get(link, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == whole[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(whole)}"


def test_result_links_expire(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer
) -> None:
    """A result link whose Expires time has passed answers 403."""
    box = make_sandbox(result_url_ttl_seconds=0)
    urls = [media_server.url_for("hello.wav")]
    task_id = submit(box, {"model": "fun-asr", "input": {"file_urls": urls}}).json()["output"][
        "task_id"
    ]
    link = finished(box, task_id)["output"]["results"][0]["transcription_url"]
    assert int(httpx.URL(link).params["Expires"]) <= time.time()
    assert http.get(link).status_code == 403


def test_query_rate_limit_answers_429_throttling(make_sandbox: Callable[..., Sandbox]) -> None:
    """More than query_qps queries within a second get 429 with a Throttling code."""
    box = make_sandbox(query_qps=5)
    with httpx.Client() as client:
        answers = [client.get(f"{box.api_url}/tasks/x", headers=HEADERS) for _ in range(8)]
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 5 and statuses.count(429) == 3
    assert answers[-1].json()["code"].startswith("Throttling")
    assert [q["status"] for q in box.state()["queries"]] == statuses


def test_submit_rate_limit_is_per_model_family(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer
) -> None:
    """Submissions beyond a family's rate get 429 Throttling; another family is unaffected."""
    box = make_sandbox(submit_rps={"fun-asr": 2, "paraformer": 20})
    urls = [media_server.url_for("hello.wav")]
    codes = [
        submit(box, {"model": "fun-asr", "input": {"file_urls": urls}}).status_code
        for _ in range(3)
    ]
    other = submit(box, {"model": "paraformer-v2", "input": {"file_urls": urls}})
    assert codes == [200, 200, 429] and other.status_code == 200
    records = box.state()["submissions"]
    assert [r["status"] for r in records] == [200, 200, 429, 200]
    assert all(isinstance(r["at"], float) for r in records)


def test_diarization_adds_speaker_ids(sandbox: Sandbox, media_server: MediaServer) -> None:
    """With diarization_enabled every sentence carries a speaker_id; without, none does."""
    urls = [media_server.url_for("weather.mp3")]

    def sentences(parameters: dict[str, Any]) -> list[dict[str, Any]]:
        body = {"model": "fun-asr", "input": {"file_urls": urls}, "parameters": parameters}
        answer = finished(sandbox, submit(sandbox, body).json()["output"]["task_id"])
        link = answer["output"]["results"][0]["transcription_url"]
        found: list[dict[str, Any]] = http.get(link).json()["transcripts"][0]["sentences"]
        return found

    assert all(
        "speaker_id" in s for s in sentences({"diarization_enabled": True, "speaker_count": 2})
    )
    assert not any("speaker_id" in s for s in sentences({}))
