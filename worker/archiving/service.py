"""Archiving as a plain service: one task's way from its receipt to its manifest or dead letter.

:meth:`ArchiveService.archive` runs one attempt for a ``task_id``: load the receipt → take the
task's lease (another live holder: ``busy``) → done already? → count the delivery (poison-loop
guard) → :class:`worker.archiving.archive.Archiver` → apply the retry policy. Every way out is
an outcome (``archived``, ``already_archived``, ``dead``, ``busy``) or :class:`RetryLater`,
which the Celery adapter (:mod:`worker.archiving.tasks`) turns into a retry with
:meth:`ArchiveService.backoff_seconds`. No error leaves without a record: a permanent error or
the last failed attempt leaves a failure manifest (best effort) and a dead letter.

:meth:`ArchiveService.sweep` re-enqueues receipts that never reached the broker and tasks
whose archiving started but whose lease died.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import redis
import structlog
from celery.exceptions import SoftTimeLimitExceeded

from core.errors import PermanentError, PipelineError, Reason, TransientError
from core.settings import Settings
from core.store import Receipt, ReceiptStore
from worker import metrics
from worker.archiving.archive import Archiver, Outcome, Progress
from worker.archiving.destinations import Destination
from worker.archiving.dlq import DeadLetters
from worker.archiving.fetch import ResultFetcher
from worker.archiving.lease import (
    Lease,
    count_delivery,
    reset_deliveries,
    stuck_tasks,
    touch_inflight,
)

log = structlog.get_logger(__name__)

TaskOutcome = Literal["archived", "already_archived", "dead", "busy", "retry"]
QueryFn = Callable[[str], dict[str, Any]]
PublishFn = Callable[[str], None]
"""Put one ``asr_ingest.archive(task_id)`` message on the ``archive`` queue."""


class RetryLater(Exception):  # a control-flow signal, not an error to report
    """Run the task again later because of ``error`` (transient; attempts remain)."""

    def __init__(self, error: TransientError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class ArchiveService:
    """Archive tasks for one worker process (all members are thread-safe and shared).

    ``query`` is ``GET /tasks/{task_id}`` inside the shared query budget, used when an event
    carries no result or a link expired.
    """

    settings: Settings
    client: redis.Redis
    destinations: list[Destination]
    fetcher: ResultFetcher
    query: QueryFn

    @property
    def store(self) -> ReceiptStore:
        """The receipt store."""
        return ReceiptStore(self.client, self.settings.dedupe_ttl_seconds)

    def backoff_seconds(self, retries: int) -> float:
        """Full-jitter backoff before retry ``retries + 1``, seconds.

        Capped at ``ARCHIVE_RETRY_MAX_SECONDS`` and half the broker visibility timeout (a
        countdown longer than the visibility timeout would be redelivered early).
        """
        settings = self.settings
        cap = min(
            settings.archive_retry_max_seconds, settings.broker_visibility_timeout_seconds / 2
        )
        return random.uniform(0, min(cap, settings.archive_retry_base_seconds * 2**retries))

    def archive(self, task_id: str, *, attempt: int, replay: bool = False) -> TaskOutcome:
        """Run attempt ``attempt`` (1-based) for ``task_id``; raises :class:`RetryLater`."""
        receipt = self.store.load(task_id)
        if receipt is None:
            error = PermanentError("no stored event", reason=Reason.NO_RECEIPT)
            return self._dead_letter(task_id, error, attempt)
        lease = Lease(self.client, task_id, self.settings.archive_lease_seconds)
        if not lease.acquire():
            return "busy"
        finished = True
        try:
            with lease:
                return self._guarded(receipt, lease, attempt, replay)
        except RetryLater:
            finished = False
            raise
        finally:
            lease.release(finished=finished)

    def _archiver(self, lease: Lease) -> Archiver:
        return Archiver(
            self.destinations,
            self.fetcher,
            query=self.query,
            guard=lease.check,
            file_concurrency=self.settings.archive_file_concurrency,
        )

    def _guarded(self, receipt: Receipt, lease: Lease, attempt: int, replay: bool) -> TaskOutcome:
        """Apply the retry policy around :meth:`_attempt`: no error leaves without a record."""
        archiver = self._archiver(lease)
        final = attempt >= self.settings.archive_max_attempts
        try:
            return self._attempt(archiver, receipt, replay, attempt, final)
        except (TransientError, SoftTimeLimitExceeded, redis.RedisError) as exc:
            error = exc if isinstance(exc, TransientError) else TransientError(repr(exc))
            if final:
                return self._give_up(archiver, receipt, error, attempt)
            raise RetryLater(error) from exc
        except PipelineError as exc:
            return self._give_up(archiver, receipt, exc, attempt)
        except Exception as exc:  # a bug: record it, keep the task replayable
            log.exception("archive_internal_error")
            internal = PermanentError(repr(exc), reason=Reason.INTERNAL_ERROR)
            return self._give_up(archiver, receipt, internal, attempt)

    def _attempt(
        self, archiver: Archiver, receipt: Receipt, replay: bool, attempt: int, final: bool
    ) -> TaskOutcome:
        task_id, settings = receipt.task_id, self.settings
        if not replay and archiver.is_archived(task_id):
            self.store.set_state(task_id, "archived")
            return "already_archived"
        deliveries = count_delivery(self.client, task_id, settings.dedupe_ttl_seconds)
        if deliveries > settings.archive_max_deliveries:
            poison = PermanentError(f"{deliveries} deliveries", reason=Reason.POISON_LOOP)
            return self._give_up(archiver, receipt, poison, attempt)
        self.store.set_state(task_id, "archiving")
        urls = [d.url for d in self.destinations]
        progress = Progress(self.client, task_id, settings.dedupe_ttl_seconds, urls)
        return self._finish(receipt, archiver.run(receipt, progress, final=final), attempt)

    def _finish(self, receipt: Receipt, result: Outcome, attempt: int) -> TaskOutcome:
        if not result.complete:
            return self._dead_letter(receipt.task_id, result.errors[0], attempt)
        self.store.set_state(receipt.task_id, "archived")
        reset_deliveries(self.client, receipt.task_id)
        metrics.archived_lag(time.time() - receipt.received_at)
        return "archived"

    def _give_up(
        self, archiver: Archiver, receipt: Receipt, error: PipelineError, attempt: int
    ) -> TaskOutcome:
        """Write a failure manifest (best effort) and the dead letter."""
        try:
            archiver.fail(receipt, error)
        except PipelineError as exc:
            log.warning("failure_manifest_not_written", reason=exc.reason)
        return self._dead_letter(receipt.task_id, error, attempt)

    def _dead_letter(self, task_id: str, error: PipelineError, attempts: int) -> TaskOutcome:
        self.store.set_state(task_id, "dead")  # first: whoever sees the dead letter sees the state
        DeadLetters(self.client).add(task_id, error.reason, attempts, str(error))
        log.warning("dead_letter", reason=error.reason, attempts=attempts)
        return "dead"

    def sweep(self, publish: PublishFn, *, now: float | None = None) -> dict[str, int]:
        """Re-enqueue stale ``received`` receipts and stuck tasks; ``{"receipts", "stuck"}``."""
        settings, store = self.settings, self.store
        stale = store.stale_pending(settings.receipt_sweep_after_seconds, now=now)
        for task_id in stale:
            publish(task_id)
            store.mark_enqueued(task_id)
        stuck = stuck_tasks(self.client, settings.archive_stuck_after_seconds, now=now)
        for task_id in stuck:
            publish(task_id)
            touch_inflight(self.client, task_id, now=now)
        if stale or stuck:
            log.info("archive_sweep", receipts=len(stale), stuck=len(stuck))
        return {"receipts": len(stale), "stuck": len(stuck)}


class LazyQuery:
    """``GET /tasks/{task_id}`` inside the shared query budget (``DASHSCOPE_QUERY_QPS``).

    The DashScope client is built on first use: most events carry their result.
    """

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self._settings = settings
        self._redis = client
        self._dashscope: Any = None

    def __call__(self, task_id: str) -> dict[str, Any]:
        from worker.dashscope import DashScopeClient  # loaded only when an event lacks a result
        from worker.ratelimit import query_limiter

        query_limiter(self._redis, self._settings.dashscope_query_qps).acquire()
        if self._dashscope is None:
            self._dashscope = DashScopeClient.from_settings(self._settings)
        answer: dict[str, Any] = self._dashscope.query(task_id)
        return answer


def build_service(settings: Settings, client: redis.Redis) -> ArchiveService:
    """The service for ``settings``; raises :class:`PermanentError` for bad destinations."""
    from worker.archiving.destinations import open_destinations

    return ArchiveService(
        settings,
        client,
        open_destinations(settings),
        ResultFetcher.from_settings(settings),
        LazyQuery(settings, client),
    )
