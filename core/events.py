"""Parse a stored completion event into a typed task event (pure functions, no I/O).

Facts from `docs/dashscope-transcription.md`:

- "The completion event": the model is the last ``:`` segment of ``data.user_api_unique_key``;
  ``data.task_status`` comes first; with ``data.contain_result`` true, ``data.output_result``
  holds the task output; without it the result must be queried (``GET /tasks/{task_id}``).
- "Models": Fun-ASR and Paraformer list files in ``output.results[]``; Qwen3-ASR-Flash-Filetrans
  has one ``output.result``.
- "Querying a task": a batch is ``SUCCEEDED`` when at least one file succeeded, so each file's
  ``subtask_status`` decides; a failed task carries ``output.code`` and ``output.message``.

- "Querying a task": ``PENDING``, ``RUNNING`` and ``SUSPENDED`` are not finished;
  ``CANCELED`` and ``UNKNOWN`` are finished without results (nothing to fetch or query).
- "The completion event": time fields are often malformed, so none is read here; an event is
  never refused for its times.

Verified bodies may hold lone UTF-16 surrogates (``"\\ud800"``, which :func:`json.loads`
accepts): every string taken from an event goes through :func:`safe_text`, so manifests, logs
and Redis keys always encode as UTF-8, and ``event.json`` keeps such a character as its JSON
escape.

Reconciliation stores synthesised events in the same envelope, so they parse the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from core.errors import PermanentError, Reason
from core.logs import strip_query
from core.models import Family, family_of, model_from_api_key

UNFINISHED_STATUSES = frozenset({"PENDING", "RUNNING", "SUSPENDED"})
"""Task statuses that are not an end (`docs/dashscope-transcription.md`, "Querying a task")."""
NO_RESULT_STATUSES = frozenset({"CANCELED", "UNKNOWN"})
"""Finished task statuses that never carry results: archived as they are, nothing queried."""


def safe_text(value: object) -> str:
    """``value`` as text that encodes as UTF-8: a lone surrogate becomes its escape ``\\udXXX``.

    JSON admits ``"\\ud800"`` and Python decodes it to a lone surrogate, which ``str.encode``,
    redis-py and file writes refuse; the escape text keeps what was sent, readably.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


@dataclass(frozen=True, slots=True)
class ResultEntry:
    """One file of a task: ``index`` is its 0-based position in the task's result list.

    ``transcription_url`` is the signed link (a credential: never logged, never archived;
    ``repr`` hides it); None when the file failed. ``file_url`` has its query string removed.
    """

    index: int
    file_url: str
    subtask_status: str
    transcription_url: str | None = field(default=None, repr=False)
    code: str | None = None
    message: str | None = None

    @property
    def succeeded(self) -> bool:
        """True when DashScope produced a result file for this entry."""
        return self.subtask_status == "SUCCEEDED" and bool(self.transcription_url)


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """A parsed completion event.

    ``entries`` is None when the event carries no result (query the task); ``code`` and
    ``message`` are the task-level failure of a failed task (else None).
    """

    task_id: str
    event_id: str
    model: str
    task_status: str
    entries: tuple[ResultEntry, ...] | None
    code: str | None = None
    message: str | None = None

    @property
    def family(self) -> Family:
        """The model family; raises :class:`PermanentError` (``unknown_model``)."""
        return family_of(self.model)


def _bad(message: str) -> PermanentError:
    return PermanentError(message, reason=Reason.BAD_EVENT)


def parse_event(body: bytes) -> TaskEvent:
    """Parse raw event bytes; the model is not checked here (see :attr:`TaskEvent.family`).

    A ``CANCELED`` or ``UNKNOWN`` task without a result gets no entries (not None: there is
    nothing to query). Raises :class:`PermanentError` (``bad_event``) when the body is not a
    JSON object with ``data.task_id``.
    """
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _bad("event is not JSON") from exc
    data = envelope.get("data") if isinstance(envelope, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("task_id"), str):
        raise _bad("event has no data.task_id")
    model = model_from_api_key(safe_text(data.get("user_api_unique_key") or ""))
    stated = safe_text(data.get("task_status") or "")
    event = TaskEvent(
        task_id=safe_text(data["task_id"]),
        event_id=safe_text(envelope.get("id") or ""),
        model=model,
        task_status=stated or "UNKNOWN",
        # only a stated CANCELED/UNKNOWN: an event without a status still gets its query
        entries=() if stated in NO_RESULT_STATUSES else None,
    )
    result = data.get("output_result")
    if data.get("contain_result") is False or not isinstance(result, dict):
        return event
    return with_output(event, result.get("output"))


def with_output(event: TaskEvent, output: object) -> TaskEvent:
    """``event`` with entries, status and failure taken from a task ``output`` object.

    ``output`` is ``data.output_result.output`` of an event or ``output`` of a query answer.
    Raises :class:`PermanentError` (``bad_event``) when it is not an object, and
    (``unknown_model``) for a model outside the three families.
    """
    if not isinstance(output, dict):
        raise _bad("task output is not an object")
    status = safe_text(output.get("task_status") or event.task_status)
    if event.family == "qwen3-asr-flash-filetrans":
        single = output.get("result")
        raw_entries = [single] if isinstance(single, dict) else []
    else:
        listed = output.get("results")
        raw_entries = listed if isinstance(listed, list) else []
    entries = tuple(_entry(i, raw, status) for i, raw in enumerate(raw_entries))
    code = output.get("code")
    message = output.get("message")
    return replace(
        event,
        task_status=status,
        entries=entries,
        code=safe_text(code) if code is not None else None,
        message=safe_text(message) if message is not None else None,
    )


def _entry(index: int, raw: object, task_status: str) -> ResultEntry:
    item: dict[str, Any] = raw if isinstance(raw, dict) else {}
    url = item.get("transcription_url")
    status = item.get("subtask_status") or ("SUCCEEDED" if url else task_status)
    code = item.get("code")
    message = item.get("message")
    return ResultEntry(
        index=index,
        file_url=strip_query(safe_text(item.get("file_url") or "")),
        subtask_status=safe_text(status),
        transcription_url=safe_text(url) if url else None,
        code=safe_text(code) if code is not None else None,
        message=safe_text(message) if message is not None else None,
    )


def redact_event(body: bytes) -> bytes:
    """The event as archived in ``event.json``: every URL's query string removed, UTF-8 JSON.

    `docs/contract.md`, "Archive layout": no signed query string is ever archived. A lone
    surrogate stays the JSON escape it arrived as (``\\ud800``), so the file is valid UTF-8
    and reads back to the same document. Raises :class:`PermanentError` (``bad_event``) when
    ``body`` is not JSON.
    """
    try:
        document = json.loads(body)
        text = json.dumps(_strip_urls(document), ensure_ascii=False, indent=2)
    except (ValueError, RecursionError) as exc:
        raise _bad("event is not JSON") from exc
    # Only lone surrogates fail to encode; each sits inside a JSON string, where "\udXXX" is
    # its escape.
    return text.encode("utf-8", "backslashreplace")


def _strip_urls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _strip_urls(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strip_urls(item) for item in value]
    if isinstance(value, str) and "://" in value and "?" in value:
        return strip_query(value)
    return value
