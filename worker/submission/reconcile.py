"""Reconciliation: tasks we submitted whose completion event never came are archived anyway.

Callbacks can be lost (EventBridge gives up, a rule is misconfigured). A sweep (beat, every
:data:`SWEEP_EVERY_S` seconds, in the worker) takes tasks submitted more than
``RECONCILE_AFTER_SECONDS`` ago and, for each with no stored receipt, queries
``GET /tasks/{task_id}`` through the account-wide query budget
(:func:`worker.ratelimit.query_limiter`, ``DASHSCOPE_QUERY_QPS``):

- ``SUCCEEDED`` / ``FAILED`` / ``CANCELED``: an event is synthesised in the real envelope shape
  (`docs/dashscope-transcription.md`, "The completion event": ``data.task_id``,
  ``data.task_status``, ``data.user_api_unique_key`` ending in the model,
  ``data.contain_result: true``, ``data.output_result.output`` = the query's ``output``),
  claimed as a receipt with ``source="reconciled"`` and published to the ``archive`` queue;
- ``PENDING`` / ``RUNNING``: checked again after :data:`RECHECK_S` seconds;
- ``UNKNOWN`` (no such task, or its data expired after ~24 h), or a query refused with a
  4xx: given up, with a warning. A query that still fails after the client's retries ends
  the sweep; the task stays due.

Each task is claimed for one check by moving its due time :data:`RECHECK_S` ahead (atomic),
so concurrent sweeps never query the same task twice; a Redis lock also keeps beat's sweeps
from overlapping. A sweep stops early when the query budget has no token within
:data:`BUDGET_WAIT_S`, or a query fails after the client's retries; the task is checked again
:data:`RECHECK_S` later.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
import structlog

from core.errors import PermanentError, TransientError
from core.store import ReceiptStore
from worker.dashscope import DashScopeClient
from worker.ratelimit import RateLimiter
from worker.submission.submissions import SubmissionStore

log = structlog.get_logger(__name__)

SWEEP_EVERY_S = 30.0
RECHECK_S = 60.0
BUDGET_WAIT_S = 2.0
LOCK_KEY = "asr:lock:reconcile"
FINISHED = frozenset({"SUCCEEDED", "FAILED", "CANCELED"})


@dataclass
class SweepReport:
    """What one sweep did: task ids per outcome."""

    archived: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    queries: int = 0


def synthesise_event(task_id: str, model: str, answer: dict[str, Any], now: float) -> bytes:
    """A completion event, in EventBridge's envelope, built from a task query ``answer``."""
    output = answer.get("output") or {}
    stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    event = {
        "id": f"reconciled-{uuid.uuid4()}",
        "source": "acs.dashscope",
        "specversion": "1.0",
        "type": "dashscope:System:AsyncTaskFinish",
        "time": stamp.replace("+00:00", "Z"),
        "datacontenttype": "application/json;charset=utf-8",
        "data": {
            "task_id": task_id,
            "task_status": output.get("task_status", "UNKNOWN"),
            "start_time": output.get("scheduled_time", ""),
            "end_time": output.get("end_time", ""),
            "user_api_unique_key": f"apikey:v1:audio:asr:transcription:{model}",
            "request_id": answer.get("request_id", ""),
            "contain_result": True,
            "output_result": {"output": output},
            "reconciled": True,
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


@dataclass
class Reconciler:
    """One sweep's collaborators; ``publish(task_id)`` puts the archive task on its queue."""

    receipts: ReceiptStore
    submissions: SubmissionStore
    client: DashScopeClient
    limiter: RateLimiter
    publish: Callable[[str], None]

    def sweep(self, now: float | None = None, limit: int = 500) -> SweepReport:
        """Check up to ``limit`` due tasks (see the module docstring); what was done."""
        report = SweepReport()
        now = time.time() if now is None else now
        for task_id in self.submissions.due(now, limit):
            if not self.submissions.take_due(task_id, now, now + RECHECK_S):
                continue  # a concurrent sweep has it
            if self.receipts.load(task_id) is not None:
                self.submissions.settle(task_id)
                report.received.append(task_id)
                continue
            try:
                self.limiter.acquire(timeout_s=BUDGET_WAIT_S)
            except TransientError:
                self.submissions.reschedule(task_id, now)  # give it back for the next sweep
                break
            report.queries += 1
            try:
                self._check(task_id, report)
            except TransientError as exc:
                log.warning("reconcile_query_failed", task_id=task_id, reason=exc.reason)
                break
            except PermanentError as exc:
                self.submissions.settle(task_id)
                report.lost.append(task_id)
                log.warning("reconcile_task_lost", task_id=task_id, reason=exc.reason)
        return report

    def _check(self, task_id: str, report: SweepReport) -> None:
        sub = self.submissions.load(task_id)
        answer = self.client.query(task_id)
        status = str((answer.get("output") or {}).get("task_status", "UNKNOWN"))
        if status in FINISHED and sub is not None:
            self._archive(task_id, sub.model, answer)
            report.archived.append(task_id)
        elif status in ("PENDING", "RUNNING"):
            report.pending.append(task_id)  # take_due moved it RECHECK_S ahead
        else:
            self.submissions.settle(task_id)
            report.lost.append(task_id)
            log.warning("reconcile_task_lost", task_id=task_id, task_status=status)

    def _archive(self, task_id: str, model: str, answer: dict[str, Any]) -> None:
        body = synthesise_event(task_id, model, answer, time.time())
        event_id = json.loads(body)["id"]
        claimed = self.receipts.claim(
            task_id, body, event_id=event_id, model=model, source="reconciled"
        )
        if claimed:
            self.publish(task_id)
            self.receipts.mark_enqueued(task_id)
            log.info("task_reconciled", task_id=task_id, model=model)
        self.submissions.settle(task_id)


def locked_sweep(client: redis.Redis, reconciler: Reconciler, ttl_s: int = 300) -> SweepReport:
    """Run one sweep unless another holds the lock (then an empty report)."""
    token = uuid.uuid4().hex
    if not client.set(LOCK_KEY, token, nx=True, ex=ttl_s):
        return SweepReport()
    try:
        return reconciler.sweep()
    finally:
        if client.get(LOCK_KEY) == token.encode():
            client.delete(LOCK_KEY)
