"""Celery tasks of archiving: thin edges around :mod:`worker.archiving.archive`.

``asr_ingest.archive(task_id, replay=False)`` on queue ``archive``: load the receipt → take the
task's lease (another live holder: drop this delivery, the holder finishes or its message is
redelivered when it dies) → done already? → count the delivery (poison-loop guard) → archive →
apply the retry policy: transient errors are retried with exponential backoff and full jitter,
capped at ``ARCHIVE_RETRY_MAX_SECONDS`` and half the broker visibility timeout (a countdown
longer than the visibility timeout would be redelivered early), for ``ARCHIVE_MAX_ATTEMPTS``
runs; permanent errors and the last failed attempt leave a manifest with the reason and a dead
letter (:mod:`worker.archiving.dlq`). ``replay`` archives again even when a manifest exists.

``asr_ingest.archive_sweep()`` (beat): re-enqueues receipts that never reached the broker
(state ``received``, older than ``RECEIPT_SWEEP_AFTER_SECONDS``) and tasks whose archiving
started but whose lease died (:func:`worker.archiving.lease.stuck_tasks`).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_prerun, worker_ready

from core.errors import PermanentError, TransientError, WorkerError
from core.queues import ARCHIVE_QUEUE, ARCHIVE_TASK
from core.settings import Settings
from core.store import Receipt, ReceiptStore
from worker import metrics
from worker.archiving.archive import Archiver, Outcome, Progress
from worker.archiving.destinations import Destination, open_destinations
from worker.archiving.dlq import DeadLetters
from worker.archiving.fetch import ResultFetcher
from worker.archiving.lease import (
    Lease,
    count_delivery,
    reset_deliveries,
    stuck_tasks,
    touch_inflight,
)
from worker.ratelimit import query_limiter

SWEEP_TASK = "asr_ingest.archive_sweep"
"""The periodic sweep; no arguments. Scheduled in :data:`worker.app.BEAT_SCHEDULE`."""

log = structlog.get_logger(__name__)


@task_prerun.connect  # type: ignore[untyped-decorator]  # celery signals are untyped
def _bind_task_context(task_id: str, task: Task, args: Any = (), **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    bound = {"celery_id": task_id, "task": task.name}
    if task.name == ARCHIVE_TASK and args:
        bound["task_id"] = str(args[0])
    structlog.contextvars.bind_contextvars(**bound)


@worker_ready.connect  # type: ignore[untyped-decorator]  # celery signals are untyped
def _serve_metrics(sender: Any, **_: Any) -> None:
    settings: Settings = sender.app.settings
    if settings.worker_metrics_port is not None:
        metrics.serve(settings.worker_metrics_port, settings.prometheus_multiproc_dir)
        log.info("metrics served", port=settings.worker_metrics_port)


@dataclass
class _Resources:
    """Per-process clients, shared by the pool's threads (all are thread-safe)."""

    settings: Settings
    client: redis.Redis
    destinations: list[Destination]
    fetcher: ResultFetcher
    _dashscope: Any = field(default=None)

    def query(self, task_id: str) -> dict[str, Any]:
        """``GET /tasks/{task_id}`` inside the shared query budget (``DASHSCOPE_QUERY_QPS``)."""
        from worker.dashscope import DashScopeClient  # loaded only when an event lacks a result

        query_limiter(self.client, self.settings.dashscope_query_qps).acquire()
        if self._dashscope is None:
            self._dashscope = DashScopeClient.from_settings(self.settings)
        answer: dict[str, Any] = self._dashscope.query(task_id)
        return answer


_resources: dict[int, _Resources] = {}
_resources_lock = threading.Lock()


def resources(app: Any) -> _Resources:
    """The clients of ``app`` (built once per process)."""
    with _resources_lock:
        found = _resources.get(id(app))
        if found is None:
            settings: Settings = app.settings
            found = _Resources(
                settings,
                app.redis,
                open_destinations(settings),
                ResultFetcher.from_settings(settings),
            )
            _resources[id(app)] = found
        return found


def backoff_seconds(settings: Settings, retries: int) -> float:
    """Full-jitter backoff before retry ``retries + 1``, seconds (see the module docstring)."""
    cap = min(settings.archive_retry_max_seconds, settings.broker_visibility_timeout_seconds / 2)
    return random.uniform(0, min(cap, settings.archive_retry_base_seconds * 2**retries))


@shared_task(  # type: ignore[untyped-decorator]  # Celery is untyped
    bind=True, name=ARCHIVE_TASK, queue=ARCHIVE_QUEUE, acks_late=True,
    reject_on_worker_lost=True, ignore_result=True,
)  # fmt: skip
def archive(self: Task, task_id: str, replay: bool = False) -> str:
    """Archive one finished task; returns the outcome (``archived``, ``dead``, ``busy``, ...)."""
    started = time.monotonic()
    outcome = "retry"
    try:
        outcome = _archive(self, task_id, replay)
        return outcome
    finally:
        metrics.task_finished(outcome, time.monotonic() - started)
        log.info("archive_task", outcome=outcome, ms=int((time.monotonic() - started) * 1000))


def _archive(task: Task, task_id: str, replay: bool) -> str:
    try:
        res = resources(task.app)
    except PermanentError as exc:  # bad ARCHIVE_URLS or OSS settings: keep the task replayable
        DeadLetters(task.app.redis).add(task_id, exc.reason, 1, str(exc))
        return "dead"
    store = ReceiptStore(res.client, res.settings.dedupe_ttl_seconds)
    receipt = store.load(task_id)
    if receipt is None:
        _dead_letter(res, store, task_id, PermanentError("no stored event", reason="no_receipt"))
        return "dead"
    lease = Lease(res.client, task_id, res.settings.archive_lease_seconds)
    if not lease.acquire():
        return "busy"
    finished = True
    try:
        with lease:
            archiver = Archiver(
                res.destinations,
                res.fetcher,
                query=res.query,
                guard=lease.check,
                file_concurrency=res.settings.archive_file_concurrency,
            )
            outcome = _run(task, res, store, archiver, receipt, replay)
    except _Again as again:
        finished = False
        raise task.retry(
            exc=again.error, countdown=backoff_seconds(res.settings, task.request.retries),
            max_retries=None,
        ) from again.error  # fmt: skip
    finally:
        lease.release(finished=finished)
    return outcome


class _Again(Exception):
    """Internal: retry the task for ``error``."""

    def __init__(self, error: TransientError) -> None:
        super().__init__(str(error))
        self.error = error


def _run(
    task: Task,
    res: _Resources,
    store: ReceiptStore,
    archiver: Archiver,
    receipt: Receipt,
    replay: bool,
) -> str:
    """Apply the retry policy around :func:`_attempt`: no error leaves without a record."""
    attempt = task.request.retries + 1
    final = attempt >= res.settings.archive_max_attempts
    try:
        return _attempt(res, store, archiver, receipt, replay, attempt, final)
    except (TransientError, SoftTimeLimitExceeded, redis.RedisError) as exc:
        error = exc if isinstance(exc, TransientError) else TransientError(repr(exc))
        if final:
            return _give_up(res, store, archiver, receipt, error, attempt)
        raise _Again(error) from exc
    except WorkerError as exc:
        return _give_up(res, store, archiver, receipt, exc, attempt)
    except Exception as exc:  # a bug: record it, keep the task replayable
        log.exception("archive_internal_error")
        internal = PermanentError(repr(exc), reason="internal_error")
        return _give_up(res, store, archiver, receipt, internal, attempt)


def _attempt(
    res: _Resources,
    store: ReceiptStore,
    archiver: Archiver,
    receipt: Receipt,
    replay: bool,
    attempt: int,
    final: bool,
) -> str:
    task_id = receipt.task_id
    if not replay and archiver.is_archived(task_id):
        store.set_state(task_id, "archived")
        return "already_archived"
    settings = res.settings
    deliveries = count_delivery(res.client, task_id, settings.dedupe_ttl_seconds)
    if deliveries > settings.archive_max_deliveries:
        poison = PermanentError(f"{deliveries} deliveries", reason="poison_loop")
        return _give_up(res, store, archiver, receipt, poison, attempt)
    store.set_state(task_id, "archiving")
    urls = [d.url for d in res.destinations]
    progress = Progress(res.client, task_id, settings.dedupe_ttl_seconds, urls)
    result = archiver.run(receipt, progress, final=final)
    return _finish(res, store, receipt, result, attempt)


def _finish(
    res: _Resources, store: ReceiptStore, receipt: Receipt, result: Outcome, attempt: int
) -> str:
    if not result.complete:
        error = result.errors[0]
        _dead_letter(res, store, receipt.task_id, error, attempt)
        return "dead"
    store.set_state(receipt.task_id, "archived")
    reset_deliveries(res.client, receipt.task_id)
    metrics.archived_lag(time.time() - receipt.received_at)
    return "archived"


def _give_up(
    res: _Resources,
    store: ReceiptStore,
    archiver: Archiver,
    receipt: Receipt,
    error: WorkerError,
    attempt: int,
) -> str:
    """Write a failure manifest (best effort) and the dead letter."""
    try:
        archiver.fail(receipt, error)
    except WorkerError as exc:
        log.warning("failure_manifest_not_written", reason=exc.reason)
    _dead_letter(res, store, receipt.task_id, error, attempt)
    return "dead"


def _dead_letter(
    res: _Resources, store: ReceiptStore, task_id: str, error: WorkerError, attempts: int = 1
) -> None:
    store.set_state(task_id, "dead")  # first: whoever sees the dead letter sees the state
    DeadLetters(res.client).add(task_id, error.reason, attempts, str(error))
    log.warning("dead_letter", reason=error.reason, attempts=attempts)


@shared_task(bind=True, name=SWEEP_TASK, queue=ARCHIVE_QUEUE, ignore_result=True)  # type: ignore[untyped-decorator]  # Celery is untyped
def archive_sweep(self: Task) -> dict[str, int]:
    """Re-enqueue receipts that never reached a worker and archiving whose lease died."""
    return sweep_once(self.app)


def sweep_once(app: Any, *, now: float | None = None) -> dict[str, int]:
    """One sweep; returns ``{"receipts": n, "stuck": m}`` re-enqueued."""
    res = resources(app)
    settings = res.settings
    store = ReceiptStore(res.client, settings.dedupe_ttl_seconds)
    stale = store.stale_pending(settings.receipt_sweep_after_seconds, now=now)
    for task_id in stale:
        app.send_task(ARCHIVE_TASK, args=[task_id], queue=ARCHIVE_QUEUE)
        store.mark_enqueued(task_id)
    stuck = stuck_tasks(res.client, settings.archive_stuck_after_seconds, now=now)
    for task_id in stuck:
        app.send_task(ARCHIVE_TASK, args=[task_id], queue=ARCHIVE_QUEUE)
        touch_inflight(res.client, task_id, now=now)
    if stale or stuck:
        log.info("archive_sweep", receipts=len(stale), stuck=len(stuck))
    return {"receipts": len(stale), "stuck": len(stuck)}
