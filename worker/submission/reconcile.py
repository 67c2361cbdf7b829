"""Reconciliation: every finished transcription task of the account reaches the archive, event
or not, whoever submitted it.

Callbacks can be lost (EventBridge's console-default retry policy gives up after about a
minute of webhook outage, a rule is misconfigured). A sweep (beat, every
``SWEEP_INTERVAL_SECONDS``, in the worker, one at a time under a Redis lock) does two passes:

**Account pass.** It lists the account's tasks (`docs/dashscope-transcription.md`, "Listing
tasks": ``GET /tasks``, flat answer, records with ``status``/``task_status``, epoch-millisecond
times) submitted in the window from the *watermark* (below) back at most
``RECONCILE_LOOKBACK_SECONDS`` (default 24 h, DashScope's retention) to one second before the
sweep began, that end fixed for the whole pass so pages cannot shift, with
:class:`worker.submission.tasklist.TaskLister`: one token of the shared query budget
(:func:`worker.ratelimit.query_limiter`, ``DASHSCOPE_QUERY_QPS``) per page of 100, records
deduplicated by ``task_id``. For each task of the three transcription families:

- ``PENDING`` / ``RUNNING`` / ``SUSPENDED``: left for a later sweep;
- finished (``SUCCEEDED`` / ``FAILED`` / ``CANCELED``) with a receipt: nothing to do;
- finished without a receipt, ended at least ``RECONCILE_AFTER_SECONDS`` ago (its event had
  that long to come): an event is synthesised in the real envelope (``data.task_id``,
  ``data.task_status``, ``data.user_api_unique_key`` ending in the model, China-time
  ``start_time``/``end_time``) with ``data.contain_result: false`` and no result, claimed as a
  receipt with source ``reconciliation`` and put on the ``archive`` queue. The archiver queries
  the task for its results (as for any event without them), so the pass costs a list page per
  100 tasks, never a query per task.

The *watermark* (``asr:reconcile:watermark``, epoch seconds) is the submission time of the
oldest task the last complete pass left open (or that pass's end): the next pass starts
:data:`LIST_SETTLE_S` before it, so a quiet account costs one page a sweep. Tasks that appear
in the list late (listing delay) are covered by that margin and by a full-lookback pass every
:data:`FULL_PASS_EVERY_S`.

**Due pass.** Tasks asr-ingest submitted are also kept in a due set
(:class:`~worker.submission.submissions.SubmissionStore`). A due task with a receipt is
settled; one seen in this sweep's list is left to it; one the list did not show (older than
the window, or never created) is queried (``GET /tasks/{task_id}``, one budget token): a
finished one is archived from the answer (``contain_result: true``), ``PENDING``/``RUNNING``
is checked again :data:`RECHECK_S` later, ``UNKNOWN`` (expired after ~24 h, or no such task)
and 4xx refusals are given up with a warning.

A sweep stops early when the query budget has no token within
:data:`~worker.submission.tasklist.BUDGET_WAIT_S` or a call fails after the client's retries
(DashScope refusing the account included); the watermark then stays where it was.

Every task archived by a pass counts ``asr_reconcile_tasks_found_total{pass}`` (``account``,
``due``): a task found here is an event that never reached the webhook (`docs/metrics.md`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import redis
import structlog
from redis.exceptions import LockError
from redis.lock import Lock

from core.errors import PermanentError, TransientError
from core.store import ReceiptStore
from worker import metrics
from worker.dashscope import DashScopeClient
from worker.ratelimit import RateLimiter
from worker.submission.submissions import SubmissionStore
from worker.submission.tasklist import (
    BUDGET_WAIT_S,
    FINISHED,
    ListedTask,
    TaskLister,
    china_time,
)

log = structlog.get_logger(__name__)

RECHECK_S = 60.0
LIST_SETTLE_S = 600.0
FULL_PASS_EVERY_S = 3600.0
LOCK_KEY = "asr:lock:reconcile"
SWEEP_LOCK_SECONDS = 30.0
"""Lifetime of the sweep lock (s), renewed while the sweep runs (:func:`locked_sweep`)."""
WATERMARK_KEY = "asr:reconcile:watermark"
FULL_LIST_KEY = "asr:reconcile:full-list"
SOURCE: Final = "reconciliation"
"""The receipt and manifest ``source`` of reconciled tasks (`docs/contract.md`)."""
TRANSCRIPTION_KEY = "apikey:v1:audio:asr:transcription:"


@dataclass
class SweepReport:
    """What one sweep did: task ids per outcome, list pages and task queries spent."""

    archived: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    queries: int = 0
    pages: int = 0


def _envelope(data: dict[str, Any], now: float) -> bytes:
    stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    event = {
        "id": f"reconciliation-{data['task_id']}-{uuid.uuid4().hex[:8]}",
        "source": "acs.dashscope",
        "specversion": "1.0",
        "type": "dashscope:System:AsyncTaskFinish",
        "time": stamp.replace("+00:00", "Z"),
        "datacontenttype": "application/json;charset=utf-8",
        "data": {**data, "reconciled": True},
    }
    return json.dumps(event, separators=(",", ":")).encode()


def synthesise_event(task_id: str, model: str, answer: dict[str, Any], now: float) -> bytes:
    """A completion event, in EventBridge's envelope, built from a task query ``answer``."""
    output = answer.get("output") or {}
    data = {
        "task_id": task_id,
        "task_status": output.get("task_status", "UNKNOWN"),
        "start_time": output.get("scheduled_time", ""),
        "end_time": output.get("end_time", ""),
        "user_api_unique_key": TRANSCRIPTION_KEY + model,
        "request_id": answer.get("request_id", ""),
        "contain_result": True,
        "output_result": {"output": output},
    }
    return _envelope(data, now)


def listed_event(task: ListedTask, now: float) -> bytes:
    """A completion event without results (``contain_result: false``) for a listed task."""
    record = task.record
    started = record.get("start_time")
    data = {
        "task_id": task.task_id,
        "task_status": task.status,
        "start_time": china_time(started / 1000) if isinstance(started, int | float) else "",
        "end_time": china_time(task.ended_at) if task.ended_at is not None else "",
        "user_api_unique_key": str(
            record.get("user_api_unique_key") or TRANSCRIPTION_KEY + task.model
        ),
        "request_id": str(record.get("request_id") or ""),
        "contain_result": False,
    }
    return _envelope(data, now)


@dataclass
class Reconciler:
    """One sweep's collaborators; ``publish(task_id)`` puts the archive task on its queue.

    ``lookback_s`` is ``RECONCILE_LOOKBACK_SECONDS``, ``grace_s`` ``RECONCILE_AFTER_SECONDS``.
    """

    receipts: ReceiptStore
    submissions: SubmissionStore
    client: DashScopeClient
    limiter: RateLimiter
    publish: Callable[[str], None]
    redis_client: redis.Redis | None = None
    lookback_s: float = 86_400.0
    grace_s: float = 600.0

    def sweep(self, now: float | None = None, limit: int = 500) -> SweepReport:
        """One account pass, then up to ``limit`` due tasks (see the module docstring)."""
        report = SweepReport()
        now = time.time() if now is None else now
        try:
            seen = self._account_pass(now, report)
        except TransientError as exc:
            log.warning("reconcile_list_failed", reason=exc.reason, pages=report.pages)
            return report
        self._due_pass(now, limit, seen, report)
        return report

    # -- account pass ------------------------------------------------------------------------

    def _account_pass(self, now: float, report: SweepReport) -> set[str]:
        """List the window, archive what has no receipt; the task ids listed."""
        end = float(int(now) - 1)
        start = self._window_start(end, now)
        lister = TaskLister(self.client, self.limiter)
        try:
            listed = lister.window(start, end)
        finally:
            report.pages = lister.pages
        oldest_open = end
        for task in listed.values():
            if task.transcription and not self._settle_listed(task, now, report):
                oldest_open = min(oldest_open, task.submitted_at or start)
        self._advance(oldest_open)
        return set(listed)

    def _window_start(self, end: float, now: float) -> float:
        """The pass's first second: the watermark less the settle margin, within the lookback."""
        full = end - self.lookback_s
        if self.redis_client is None:
            return full
        raw = self.redis_client.get(WATERMARK_KEY)
        if raw is None or self.redis_client.set(
            FULL_LIST_KEY, "1", nx=True, ex=int(FULL_PASS_EVERY_S)
        ):
            return full
        return max(full, float(raw) - LIST_SETTLE_S)

    def _advance(self, watermark: float) -> None:
        if self.redis_client is not None:
            self.redis_client.set(WATERMARK_KEY, repr(watermark), ex=int(self.lookback_s) + 3600)

    def _settle_listed(self, task: ListedTask, now: float, report: SweepReport) -> bool:
        """Handle one listed transcription task; True when it needs no later look."""
        if task.status not in FINISHED:
            return False
        if self.receipts.load(task.task_id) is not None:
            self.submissions.settle(task.task_id)
            return True
        ended = task.ended_at or task.submitted_at or 0.0
        if ended + self.grace_s > now:
            return False  # its event may still come
        body = listed_event(task, time.time())
        if self._claim(task.task_id, task.model, body):
            report.archived.append(task.task_id)
            metrics.tasks_reconciled("account")
        return True

    def _claim(self, task_id: str, model: str, body: bytes) -> bool:
        """Store ``body`` as the task's receipt and enqueue it; False when one existed."""
        event_id = json.loads(body)["id"]
        claimed = self.receipts.claim(task_id, body, event_id=event_id, model=model, source=SOURCE)
        if claimed:
            self.publish(task_id)
            self.receipts.mark_enqueued(task_id)
            log.info("task_reconciled", task_id=task_id, model=model)
        self.submissions.settle(task_id)
        return claimed

    # -- due pass ----------------------------------------------------------------------------

    def _due_pass(self, now: float, limit: int, seen: set[str], report: SweepReport) -> None:
        for task_id in self.submissions.due(now, limit):
            if not self.submissions.take_due(task_id, now, now + RECHECK_S):
                continue  # a concurrent sweep has it
            if self.receipts.load(task_id) is not None:
                self.submissions.settle(task_id)
                report.received.append(task_id)
                continue
            if task_id in seen:
                report.pending.append(task_id)  # the account pass decides; take_due moved it
                continue
            if not self._query_due(task_id, now, report):
                break

    def _query_due(self, task_id: str, now: float, report: SweepReport) -> bool:
        """Query one due task the list did not show; False when the sweep must stop."""
        try:
            self.limiter.acquire(timeout_s=BUDGET_WAIT_S)
        except TransientError:
            self.submissions.reschedule(task_id, now)  # give it back for the next sweep
            return False
        report.queries += 1
        try:
            self._check(task_id, report)
        except TransientError as exc:
            log.warning("reconcile_query_failed", task_id=task_id, reason=exc.reason)
            return False
        except PermanentError as exc:
            self.submissions.settle(task_id)
            report.lost.append(task_id)
            log.warning("reconcile_task_lost", task_id=task_id, reason=exc.reason)
        return True

    def _check(self, task_id: str, report: SweepReport) -> None:
        sub = self.submissions.load(task_id)
        answer = self.client.query(task_id)
        status = str((answer.get("output") or {}).get("task_status", "UNKNOWN"))
        if status in FINISHED and sub is not None:
            body = synthesise_event(task_id, sub.model, answer, time.time())
            if self._claim(task_id, sub.model, body):
                report.archived.append(task_id)
                metrics.tasks_reconciled("due")
        elif status in ("PENDING", "RUNNING", "SUSPENDED"):
            report.pending.append(task_id)  # take_due moved it RECHECK_S ahead
        else:
            self.submissions.settle(task_id)
            report.lost.append(task_id)
            log.warning("reconcile_task_lost", task_id=task_id, task_status=status)


def locked_sweep(
    client: redis.Redis, reconciler: Reconciler, ttl_s: float = SWEEP_LOCK_SECONDS
) -> SweepReport:
    """Run one sweep unless another holds the lock (then an empty report).

    The lock (redis-py's :class:`~redis.lock.Lock`, ``ttl_s`` seconds) is renewed every third of
    its lifetime while the sweep runs, so a long sweep keeps it and a killed worker's lapses
    within ``ttl_s`` (a fixed 300 s lock once stopped reconciliation that long).
    """
    lock = client.lock(LOCK_KEY, timeout=ttl_s, blocking=False, thread_local=False)
    if not lock.acquire():
        return SweepReport()
    stop = threading.Event()
    renewal = threading.Thread(target=_renew, args=(lock, ttl_s, stop), daemon=True)
    renewal.start()
    try:
        return reconciler.sweep()
    finally:
        stop.set()
        renewal.join()
        with contextlib.suppress(LockError, redis.RedisError):  # lapsed: nothing to release
            lock.release()


def _renew(lock: Lock, ttl_s: float, stop: threading.Event) -> None:
    """Extend ``lock`` to ``ttl_s`` every third of it until ``stop``; quit once it is lost."""
    while not stop.wait(ttl_s / 3):
        try:
            lock.extend(ttl_s, replace_ttl=True)
        except (LockError, redis.RedisError) as exc:
            log.warning("reconcile_lock_lost", error=type(exc).__name__)
            return
