"""Tasks, subtasks and the record of everything the sandbox saw, with their JSON views.

The query output follows docs/dashscope-transcription.md ("Querying a task"): ``task_status``
``PENDING`` → (``SUSPENDED`` →) ``RUNNING`` → ``SUCCEEDED`` (at least one file succeeded) or
``FAILED`` (``PENDING`` → ``CANCELED`` when canceled),
``submit_time``/``scheduled_time``/``end_time`` as ``YYYY-MM-DD HH:MM:SS.mmm`` in China time
(UTC+8), per-file ``results`` with ``subtask_status``, ``task_metrics`` and ``usage``
(``duration`` in seconds; ``seconds`` for Qwen, whose single file is ``output.result``).
The list entry (:meth:`Task.record`) is described in :mod:`sandbox.tasklist`.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from sandbox.protocol import Family

CHINA = dt.timezone(dt.timedelta(hours=8))
API_KEY_ID = "1250"  # the id in the documented event example; one key for the whole sandbox
TRANSCRIPTION_KEY_PREFIX = "apikey:v1:audio:asr:transcription:"


def china_time(epoch: float, *, millis: bool = True) -> str:
    """``epoch`` seconds as China local time without zone marker (DashScope's format)."""
    text = dt.datetime.fromtimestamp(epoch, CHINA).strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-3] if millis else text[:-7]


def epoch_ms(epoch: float | None) -> int | None:
    """``epoch`` seconds as integer milliseconds (``None`` stays ``None``)."""
    return None if epoch is None else int(epoch * 1000)


class Timed(Protocol):
    """A task as the list sees it: ids, model, status and epoch-second timestamps."""

    task_id: str
    request_id: str
    model: str
    status: str
    submitted_at: float
    scheduled_at: float | None
    ended_at: float | None


def list_record(task: Timed, key: str, region: str, account_id: str) -> dict[str, Any]:
    """The ``GET /tasks`` entry of ``task`` (the Java SDK's ``AsyncTaskInfo``, see tasklist).

    ``key`` is the ``user_api_unique_key``; times are epoch milliseconds (``None`` until set).
    """
    return {
        "task_id": task.task_id,
        "status": task.status,
        "task_status": task.status,
        "model_name": task.model,
        "api_key_id": API_KEY_ID,
        "region": region,
        "request_id": task.request_id,
        "user_api_unique_key": key,
        "caller_uid": account_id,
        "caller_parent_id": account_id,
        "gmt_create": epoch_ms(task.submitted_at),
        "start_time": epoch_ms(task.scheduled_at),
        "end_time": epoch_ms(task.ended_at),
    }


@dataclass
class Subtask:
    """One file of a task: its URL, status, and on success its result link and duration (ms)."""

    file_url: str
    status: str = "PENDING"
    transcription_url: str | None = None
    duration_ms: int = 0
    code: str | None = None
    message: str | None = None

    def view(self) -> dict[str, Any]:
        """The entry of ``output.results`` for this file."""
        entry: dict[str, Any] = {"file_url": self.file_url}
        if self.transcription_url:
            entry["transcription_url"] = self.transcription_url
        if self.code:
            entry.update(code=self.code, message=self.message)
        entry["subtask_status"] = self.status
        return entry


@dataclass
class Task:
    """One submitted task and its lifecycle timestamps (epoch seconds)."""

    task_id: str
    request_id: str
    model: str
    family: Family
    parameters: dict[str, Any]
    subtasks: list[Subtask]
    submitted_at: float
    status: str = "PENDING"
    scheduled_at: float | None = None
    ended_at: float | None = None
    remaining: int = 0
    results: dict[int, bytes] = field(default_factory=dict)

    def metrics(self) -> dict[str, int]:
        """``task_metrics``: TOTAL, SUCCEEDED and FAILED file counts."""
        done = [s.status for s in self.subtasks]
        return {
            "TOTAL": len(done),
            "SUCCEEDED": done.count("SUCCEEDED"),
            "FAILED": done.count("FAILED"),
        }

    def finish(self, now: float) -> None:
        """Set the final status: SUCCEEDED when any file succeeded, else FAILED."""
        self.ended_at = now
        ok = any(s.status == "SUCCEEDED" for s in self.subtasks)
        self.status = "SUCCEEDED" if ok else "FAILED"

    def output(self) -> dict[str, Any]:
        """The ``output`` object of ``GET /tasks/{id}`` (and of the completion event)."""
        out: dict[str, Any] = {"task_id": self.task_id, "task_status": self.status}
        out["submit_time"] = china_time(self.submitted_at)
        if self.scheduled_at is not None:
            out["scheduled_time"] = china_time(self.scheduled_at)
        if self.ended_at is not None:
            out["end_time"] = china_time(self.ended_at)
        if self.family == "qwen3-asr-flash-filetrans":
            return self._qwen_output(out)
        if self.status in ("SUCCEEDED", "FAILED", "CANCELED"):
            out["results"] = [s.view() for s in self.subtasks]
        if self.status == "FAILED":
            out.update(code=self.subtasks[0].code, message=self.subtasks[0].message)
        out["task_metrics"] = self.metrics()
        return out

    def _qwen_output(self, out: dict[str, Any]) -> dict[str, Any]:
        subtask = self.subtasks[0]
        if self.status == "SUCCEEDED":
            out["result"] = {
                "file_url": subtask.file_url,
                "transcription_url": subtask.transcription_url,
            }
        elif self.status == "FAILED":
            out.update(code=subtask.code, message=subtask.message)
        return out

    def record(self, region: str, account_id: str) -> dict[str, Any]:
        """This task's entry in ``GET /tasks`` (see :mod:`sandbox.tasklist`)."""
        return list_record(self, TRANSCRIPTION_KEY_PREFIX + self.model, region, account_id)

    def usage(self) -> dict[str, int] | None:
        """``usage``: billed seconds of the files that succeeded, once the task has ended."""
        if self.ended_at is None:
            return None
        ms = sum(s.duration_ms for s in self.subtasks if s.status == "SUCCEEDED")
        key = "seconds" if self.family == "qwen3-asr-flash-filetrans" else "duration"
        return {key: math.ceil(ms / 1000)}

    def summary(self) -> dict[str, Any]:
        """A plain-JSON picture of the task for tests (state endpoint)."""
        return {
            "task_id": self.task_id,
            "model": self.model,
            "status": self.status,
            "parameters": self.parameters,
            "submitted_at": self.submitted_at,
            "ended_at": self.ended_at,
            "subtasks": [s.view() for s in self.subtasks],
        }
