"""Submits whose answer never came: remember each attempt before it is sent, resolve it later.

DashScope has no idempotency key (`docs/dashscope-transcription.md`, "A submit has no
idempotency key"): a submit that timed out or lost its connection may still have created a
(billed) task, and so may a worker killed between DashScope's answer and our record of it.
So an *intent* is stored in Redis before every submit call and removed once the task id is
recorded (or the call was definitely refused)::

    asr:run:<run_id>:batch:<n>:intent   JSON of an Intent (expires with the run's records)

A batch that finds an intent (the call's answer was lost, or the worker died) never submits
blindly; :class:`Resolver` looks for the task first:

1. list the account's tasks of the same model submitted from :data:`CLOCK_SKEW_S` before the
   attempt until now (:class:`worker.submission.tasklist.TaskLister`, one budget token a page);
2. skip tasks already recorded as ours, and tasks already compared (``checked``); a candidate
   not finished yet cannot be compared (DashScope lists file URLs only in a finished task's
   ``results[]``) and keeps the question open;
3. query each finished candidate (one budget token each) and compare the paths of its
   ``results[].file_url`` (Qwen: ``result.file_url``), query string removed, with the paths of
   the URLs we signed for the attempt: the same set means it is our task.

Found: the batch records that task (no new submission). Not found: the batch is submitted
again only once the list is *settled*: ``SUBMIT_UNCERTAIN_SETTLE_SECONDS`` after the attempt
and after at least :data:`MIN_LOOKS` looks, allowing for a task that appears in the list late.
A failed Qwen task lists no file URL: it cannot be matched, and is taken as not ours.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis

from worker.dashscope import DashScopeClient
from worker.ratelimit import RateLimiter
from worker.submission.submissions import FileEntry, SubmissionStore
from worker.submission.tasklist import BUDGET_WAIT_S, TaskLister

CLOCK_SKEW_S = 60.0
"""The list window starts this long before the attempt (our clock against DashScope's)."""
MIN_LOOKS = 2
MAX_QUERIES_PER_LOOK = 50
_INTENT = "asr:run:{}:batch:{}:intent"


def url_path(url: str) -> str:
    """The decoded path of ``url`` (no scheme, host or query string: never a credential)."""
    return unquote(urlsplit(url).path)


@dataclass
class Intent:
    """One submit attempt of a batch: ``at`` in epoch seconds, ``paths`` of the signed URLs.

    ``looks`` counts resolution passes, ``checked`` the task ids compared and found not ours.
    """

    at: float
    model: str
    parameters: dict[str, Any]
    files: list[FileEntry]
    prints: list[str]
    paths: list[str]
    looks: int = 0
    checked: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Intent:
        """Inverse of :meth:`to_json`."""
        data = json.loads(raw)
        data["files"] = [FileEntry(**entry) for entry in data["files"]]
        return cls(**data)


class IntentStore:
    """Intents of batches in Redis, kept ``ttl_seconds`` (the submission records' lifetime)."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds

    def save(self, run_id: str, n: int, intent: Intent) -> None:
        """Store (or update) the intent of batch ``n`` of ``run_id``."""
        self._redis.set(_INTENT.format(run_id, n), intent.to_json(), ex=self._ttl)

    def load(self, run_id: str, n: int) -> Intent | None:
        """The stored intent, or None when the batch has none."""
        raw = self._redis.get(_INTENT.format(run_id, n))
        return Intent.from_json(raw) if isinstance(raw, bytes) else None

    def clear(self, run_id: str, n: int) -> None:
        """Forget the intent (its task is recorded, or the call was definitely refused)."""
        self._redis.delete(_INTENT.format(run_id, n))


def output_paths(output: dict[str, Any]) -> set[str]:
    """Paths of the media ``file_url`` of every file in a task query's ``output``."""
    entries = output.get("results")
    if not isinstance(entries, list):
        single = output.get("result")
        entries = [single] if isinstance(single, dict) else []
    return {
        url_path(str(e["file_url"])) for e in entries if isinstance(e, dict) and e.get("file_url")
    }


@dataclass(frozen=True)
class Resolution:
    """A pass's verdict: ``task_id`` when found; else ``settled`` says "not created"."""

    task_id: str | None
    settled: bool


@dataclass
class Resolver:
    """Find the task an intent may have created (see the module docstring)."""

    client: DashScopeClient
    limiter: RateLimiter
    submissions: SubmissionStore
    settle_s: float

    def resolve(self, intent: Intent, now: float) -> Resolution:
        """One pass over the list for ``intent`` (updated in place: ``looks``, ``checked``).

        Raises :class:`core.errors.TransientError` (budget, network, account blocked) and
        :class:`worker.dashscope.DashScopeError` as the list and query calls do.
        """
        listed = TaskLister(self.client, self.limiter).window(
            intent.at - CLOCK_SKEW_S, now, model_name=intent.model
        )
        open_question = False
        queries = 0
        for task in listed.values():
            if task.task_id in intent.checked or self.submissions.load(task.task_id):
                continue
            if not task.finished or queries >= MAX_QUERIES_PER_LOOK:
                open_question = True
                continue
            queries += 1
            if self._is_ours(task.task_id, intent):
                return Resolution(task.task_id, settled=True)
            intent.checked.append(task.task_id)
        intent.looks += 1
        settled = intent.looks >= MIN_LOOKS and now - intent.at >= self.settle_s
        return Resolution(None, settled=settled and not open_question)

    def _is_ours(self, task_id: str, intent: Intent) -> bool:
        self.limiter.acquire(timeout_s=BUDGET_WAIT_S)
        output = self.client.query(task_id).get("output") or {}
        paths = output_paths(output) if isinstance(output, dict) else set()
        return bool(paths) and paths == set(intent.paths)
