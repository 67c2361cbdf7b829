"""Event parsing: every family's result path, failures, missing results, unknown models."""

from __future__ import annotations

import json

import pytest

from core.errors import PermanentError
from core.events import parse_event, redact_event, safe_text, with_output
from tests.support import task_events as te

SIGNED = "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/r/1.json?Expires=1&Signature=s"


@pytest.mark.parametrize("model", ["fun-asr", "fun-asr-2025-11-07", "paraformer-v2"])
def test_batch_families_read_results_list(model: str) -> None:
    """Fun-ASR and Paraformer entries come from output.results[], in order, with statuses."""
    body = te.event("t1", model, te.batch_output("t1", [te.ok(SIGNED), te.failed()]))
    event = parse_event(body)
    assert (event.task_id, event.model, event.task_status) == ("t1", model, "SUCCEEDED")
    assert event.entries is not None
    first, second = event.entries
    assert (first.index, first.succeeded, first.transcription_url) == (0, True, SIGNED)
    assert first.file_url == "https://media.example/a.wav"
    assert (second.index, second.succeeded, second.code) == (1, False, "InvalidFile.DownloadFailed")


def test_qwen_filetrans_reads_single_result() -> None:
    """Qwen3-ASR-Flash-Filetrans has one output.result, which becomes entry 0."""
    body = te.event("t2", "qwen3-asr-flash-filetrans", te.qwen_output("t2", SIGNED))
    event = parse_event(body)
    assert event.family == "qwen3-asr-flash-filetrans"
    assert event.entries is not None and len(event.entries) == 1
    assert event.entries[0].succeeded and event.entries[0].transcription_url == SIGNED


def test_failed_task_carries_code_and_message() -> None:
    """A FAILED task has no entries but the task-level code and message."""
    event = parse_event(te.event("t3", "paraformer-v2", te.failed_output("t3")))
    assert event.task_status == "FAILED"
    assert event.entries == ()
    assert (event.code, event.message) == (
        "InvalidFile.DecodeFailed",
        "The audio file cannot be decoded.",
    )


def test_event_without_result_needs_query() -> None:
    """contain_result false (no output_result) leaves entries None; a query output fills them."""
    event = parse_event(te.event("t4", "fun-asr", None))
    assert event.entries is None
    filled = with_output(event, te.batch_output("t4", [te.ok(SIGNED)]))
    assert filled.entries is not None and filled.entries[0].transcription_url == SIGNED


def test_unknown_model_is_permanent() -> None:
    """A model outside the three families raises PermanentError(unknown_model) naming it."""
    with pytest.raises(PermanentError, match="whisper-9") as info:
        parse_event(te.event("t5", "whisper-9", te.batch_output("t5", [te.ok(SIGNED)])))
    assert info.value.reason == "unknown_model"


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"data": {}}', b'{"data": {"task_id": 5}}'])
def test_bad_event_is_permanent(body: bytes) -> None:
    """Bodies without a JSON object carrying data.task_id are rejected as bad_event."""
    with pytest.raises(PermanentError) as info:
        parse_event(body)
    assert info.value.reason == "bad_event"


def test_redacted_event_has_no_signed_query() -> None:
    """event.json keeps the event but drops every URL's query string."""
    body = te.event("t6", "fun-asr", te.batch_output("t6", [te.ok(SIGNED)]))
    redacted = redact_event(body)
    assert b"Signature" not in redacted and b"Expires" not in redacted
    document = json.loads(redacted)
    entry = document["data"]["output_result"]["output"]["results"][0]
    assert entry["transcription_url"] == SIGNED.split("?")[0]


def test_entry_repr_hides_signed_link() -> None:
    """The repr of a result entry never shows the signed transcription_url."""
    event = parse_event(te.event("t7", "fun-asr", te.batch_output("t7", [te.ok(SIGNED)])))
    assert "Signature" not in repr(event)


@pytest.mark.parametrize("status", ["CANCELED", "UNKNOWN"])
def test_canceled_and_unknown_are_finished_without_results(status: str) -> None:
    """CANCELED and UNKNOWN tasks carry no results and need no query: empty entries, not None."""
    event = parse_event(te.event("t8", "fun-asr", None, status=status))
    assert (event.task_status, event.entries) == (status, ())


def test_malformed_times_are_never_read() -> None:
    """The documentation's malformed times (and junk in their place) do not stop parsing."""
    document = json.loads(te.event("t9", "fun-asr", te.batch_output("t9", [te.ok(SIGNED)])))
    document.update(time="2023-1-25T01:45:16.969Z", aliyunpublishtime="2020-11-19T21:04:42.179PRC")
    document["data"].update(start_time=17, end_time={"x": 1})
    event = parse_event(json.dumps(document).encode())
    assert event.entries is not None and len(event.entries) == 1


def test_lone_surrogates_become_encodable_text() -> None:
    """Lone surrogates in the id, model, codes and URLs come out as escape text, UTF-8-safe."""
    output = te.batch_output("t10", [{**te.failed(), "code": "C\ud800", "message": "\udfff"}])
    document = json.loads(te.event("t10", "paraformer-v2", output, event_id="e\ud800"))
    document["data"]["user_api_unique_key"] += "\udc00"
    event = parse_event(json.dumps(document).encode())
    assert (event.event_id, event.model) == ("e\\ud800", "paraformer-v2\\udc00")
    assert event.entries is not None
    assert (event.entries[0].code, event.entries[0].message) == ("C\\ud800", "\\udfff")
    for text in (event.event_id, event.model, event.entries[0].code, event.entries[0].file_url):
        assert text is not None
        text.encode()


def test_redacted_event_keeps_lone_surrogates_as_escapes() -> None:
    """event.json of a body with lone surrogates is valid UTF-8 and reads back the same."""
    document = {"id": "\ud800", "data": {"task_id": "t11", "k\udfff": ["\\\ud800", "é"]}}
    redacted = redact_event(
        json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    )
    assert json.loads(redacted.decode("utf-8")) == document
    assert "é" in redacted.decode("utf-8")


def test_safe_text_leaves_valid_text_alone() -> None:
    """Valid text (ASCII or not) is returned unchanged; only lone surrogates are escaped."""
    assert safe_text("Grüße 😀") == "Grüße 😀"
    assert safe_text("a\ud800b") == "a\\ud800b"
    assert safe_text(5) == "5"


def test_event_without_status_or_result_still_needs_query() -> None:
    """No task_status and no result: status UNKNOWN for the record, entries None (query it)."""
    document = json.loads(te.event("t12", "fun-asr", None))
    del document["data"]["task_status"]
    event = parse_event(json.dumps(document).encode())
    assert (event.task_status, event.entries) == ("UNKNOWN", None)
