"""Archiving as a plain service: one task's way from its receipt to its manifest or dead letter.

:meth:`ArchiveService.archive` runs one attempt for a ``task_id``: check the id → load the
receipt → take the task's lease (another live holder: :class:`RetryLater` after the lease's
remaining time, so the message is never dropped) → done already? → count the run (poison-loop
guard) → :class:`worker.archiving.archive.Archiver` → apply the retry policy. Every way out is
an outcome (``archived``, ``already_archived``, ``dead``) or :class:`RetryLater`, which the
Celery adapter (:mod:`worker.archiving.tasks`) turns into a retry with its ``countdown``. No
error leaves without a record: a permanent error or the last failed attempt leaves a failure
manifest (best effort) and a dead letter.

The retry policy (:class:`RetryPlan`): a transient failure (download, destination, Redis,
spool space, a lost lease) is retried with capped full-jitter backoff until the task's result
links expire, :func:`retry_horizon`, less :data:`EXPIRY_MARGIN_SECONDS`; then the task is
dead-lettered with its last reason and a manifest that records every file. Attempts are not
the limit (``ARCHIVE_MAX_ATTEMPTS`` is unset by default; when set it limits too). A countdown
never exceeds half the broker visibility timeout (a longer one would be redelivered early) nor
the time left before the horizon. Permanent failures (too large, not JSON, outside the allowed
pattern, expired links: ``result_expired``) fail at once.

:meth:`ArchiveService.sweep` re-enqueues receipts that never reached the broker and tasks
whose archiving started but whose lease died.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import redis
import structlog
from celery.exceptions import SoftTimeLimitExceeded

from core.errors import PermanentError, PipelineError, Reason, TransientError
from core.events import LINK_LIFETIME_SECONDS, check_task_id, link_expiry, parse_event
from core.media import read_media
from core.settings import Settings
from core.store import Receipt, ReceiptStore
from worker import metrics
from worker.archiving.archive import Archiver, Outcome, Progress
from worker.archiving.destinations import Destination
from worker.archiving.dlq import DeadLetters
from worker.archiving.fetch import ResultFetcher
from worker.archiving.lease import (
    Lease,
    reset_deliveries,
    start_run,
    stuck_tasks,
    touch_inflight,
)

log = structlog.get_logger(__name__)

TaskOutcome = Literal["archived", "already_archived", "dead"]
QueryFn = Callable[[str], dict[str, Any]]
PublishFn = Callable[[str], None]
"""Put one ``asr_ingest.archive(task_id)`` message on the ``archive`` queue."""

EXPIRY_MARGIN_SECONDS = 5.0
"""The last retry starts at least this long before the result links expire (seconds)."""
BUSY_SLACK_SECONDS = 1.0
"""A task whose lease is held retries after the lease's remaining time plus up to this (s)."""


class RetryLater(Exception):  # a control-flow signal, not an error to report
    """Run the task again in ``countdown`` seconds because of ``error`` (transient)."""

    def __init__(self, error: TransientError, countdown: float) -> None:
        super().__init__(str(error))
        self.error = error
        self.countdown = countdown


def retry_horizon(receipt: Receipt) -> float:
    """When retrying stops, seconds since the epoch: the latest ``Expires`` of the event's
    result links, else 24 h after ``data.end_time``, else 24 h after the receipt
    (`docs/dashscope-transcription.md`, "The transcription result file")."""
    try:
        event = parse_event(receipt.body)
    except PipelineError:
        return receipt.received_at + LINK_LIFETIME_SECONDS
    links = [e.transcription_url for e in event.entries or () if e.transcription_url]
    expiries = [at for at in map(link_expiry, links) if at is not None]
    if expiries:
        return max(expiries)
    return (event.end_time or receipt.received_at) + LINK_LIFETIME_SECONDS


@dataclass
class RetryPlan:
    """The retry decision of one attempt, made once, when first asked (after the attempt).

    ``retries`` is how many retries came before (0 on the first run); ``horizon`` is
    :func:`retry_horizon`'s.
    """

    settings: Settings
    retries: int
    horizon: float
    clock: Callable[[], float] = time.time
    _decided: list[float | None] = field(default_factory=list)

    def countdown(self) -> float | None:
        """Seconds until the next attempt, or None when no retry is left."""
        if not self._decided:
            self._decided.append(self._decide())
        return self._decided[0]

    def exhausted(self) -> bool:
        """True when no retry is left (the attempt must record its failures for good)."""
        return self.countdown() is None

    def _decide(self) -> float | None:
        limit = self.settings.archive_max_attempts
        if limit is not None and self.retries + 1 >= limit:
            return None
        left = self.horizon - EXPIRY_MARGIN_SECONDS - self.clock()
        if left <= 0:
            return None
        return min(backoff_seconds(self.settings, self.retries), left)


def backoff_seconds(settings: Settings, retries: int) -> float:
    """Full-jitter backoff before retry ``retries + 1``, seconds.

    Capped at ``ARCHIVE_RETRY_MAX_SECONDS`` and half the broker visibility timeout (a
    countdown longer than the visibility timeout would be redelivered early).
    """
    cap = min(settings.archive_retry_max_seconds, settings.broker_visibility_timeout_seconds / 2)
    exponent = min(retries, 60)  # 2**60 s is past any cap; keeps the float finite
    return random.uniform(0, min(cap, settings.archive_retry_base_seconds * 2**exponent))


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

    @cached_property
    def store(self) -> ReceiptStore:
        """The receipt store (built once: it registers its scripts with the client)."""
        return ReceiptStore(self.client, self.settings.dedupe_ttl_seconds)

    def backoff_seconds(self, retries: int) -> float:
        """:func:`backoff_seconds` under this service's settings."""
        return backoff_seconds(self.settings, retries)

    def archive(self, task_id: str, *, attempt: int, replay: bool = False) -> TaskOutcome:
        """Run attempt ``attempt`` (1-based) for ``task_id``; raises :class:`RetryLater`.

        Redis errors before the lease is held are :class:`RetryLater` too (nothing was done).
        """
        try:
            check_task_id(task_id)
        except PermanentError as exc:  # never a key or a path: only the dead letter names it
            return self._dead_letter(task_id, exc, attempt)
        try:
            lease = Lease(self.client, task_id, self.settings.archive_lease_seconds)
            receipt, taken = lease.acquire_for(self.store)  # one round trip
        except redis.RedisError as exc:
            error = TransientError(repr(exc), reason=Reason.REDIS_UNAVAILABLE)
            raise RetryLater(error, self.backoff_seconds(attempt - 1)) from exc
        if receipt is None:
            missing = PermanentError("no stored event", reason=Reason.NO_RECEIPT)
            return self._dead_letter(task_id, missing, attempt)
        if not taken:
            raise self._busy(lease, attempt - 1)
        metrics.receipt_lag(receipt, attempt=attempt, replay=replay)
        return self._holding(receipt, lease, attempt, replay)

    def _busy(self, lease: Lease, retries: int) -> RetryLater:
        """Come back when the holder may be done: never drop the message (it may be the only
        one). The backoff, but never later than the lease's remaining time (by then the holder
        renewed it, finished, or died), plus up to :data:`BUSY_SLACK_SECONDS`."""
        try:
            left = lease.remaining_seconds()
        except redis.RedisError:
            left = self.settings.archive_lease_seconds
        wait = min(left, max(1.0, self.backoff_seconds(retries)))
        held = TransientError(f"lease of {lease.task_id} held", reason=Reason.LEASE_HELD)
        return RetryLater(held, wait + random.uniform(0, BUSY_SLACK_SECONDS))

    def _holding(self, receipt: Receipt, lease: Lease, attempt: int, replay: bool) -> TaskOutcome:
        """Run the attempt under ``lease``; always release it and end the run's count."""
        finished = True
        try:
            with lease:
                return self._guarded(receipt, lease, attempt, replay)
        except RetryLater as again:
            finished = False
            retry_at = time.time() + again.countdown
            self._quietly(touch_inflight, self.client, receipt.task_id, now=retry_at)
            raise
        finally:
            if not lease.released:  # else release_archived did both
                self._quietly(reset_deliveries, self.client, receipt.task_id)
                self._quietly(lease.release, finished=finished)

    @staticmethod
    def _quietly(action: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run a clean-up step; a Redis error is logged (the lease expires by itself)."""
        try:
            action(*args, **kwargs)
        except redis.RedisError as exc:
            step = getattr(action, "__name__", "")
            log.warning("archive_cleanup_failed", step=step, error=repr(exc))

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
        plan = RetryPlan(self.settings, attempt - 1, retry_horizon(receipt))
        try:
            return self._attempt(archiver, receipt, lease, replay, plan)
        except (TransientError, SoftTimeLimitExceeded, redis.RedisError) as exc:
            error = _transient(exc)
            countdown = plan.countdown()
            if countdown is None:
                return self._give_up(archiver, receipt, error, attempt)
            raise RetryLater(error, countdown) from exc
        except PipelineError as exc:
            return self._give_up(archiver, receipt, exc, attempt)
        except Exception as exc:  # a bug: record it, keep the task replayable
            log.exception("archive_internal_error")
            internal = PermanentError(repr(exc), reason=Reason.INTERNAL_ERROR)
            return self._give_up(archiver, receipt, internal, attempt)

    def _attempt(
        self,
        archiver: Archiver,
        receipt: Receipt,
        lease: Lease,
        replay: bool,
        plan: RetryPlan,
    ) -> TaskOutcome:
        """One run under ``lease``: attempt ``plan.retries + 1``."""
        attempt, task_id, settings = plan.retries + 1, receipt.task_id, self.settings
        if not replay and archiver.is_archived(task_id):
            lease.release_archived()
            return "already_archived"
        ttl, limit = settings.dedupe_ttl_seconds, settings.archive_max_deliveries
        deliveries = start_run(self.client, task_id, ttl, limit)  # receipt ``archiving`` too
        if deliveries > limit:
            poison = PermanentError(f"{deliveries} deliveries", reason=Reason.POISON_LOOP)
            return self._give_up(archiver, receipt, poison, attempt)
        urls = [d.url for d in self.destinations]
        progress = Progress(self.client, task_id, ttl, urls)
        media = read_media(self.client, task_id)
        result = archiver.run(receipt, progress, final=plan.exhausted, media=media)
        return self._finish(receipt, lease, result, attempt)

    def _finish(self, receipt: Receipt, lease: Lease, result: Outcome, attempt: int) -> TaskOutcome:
        if not result.complete:
            return self._dead_letter(receipt.task_id, result.errors[0], attempt)
        lease.release_archived()  # the receipt ``archived`` with the lease's end, one script
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
        """Re-enqueue what has no message: stale ``received`` receipts, stuck tasks, and open
        receipts waiting longer than ``ARCHIVE_REENQUEUE_AFTER_SECONDS`` without a live lease
        (a message lost by the broker, e.g. taken off a Redis primary that died before the
        worker recorded it). ``{"receipts", "stuck", "open"}``: how many were re-enqueued.
        Extra messages are harmless: the archive task is idempotent and leased.
        """
        settings, store = self.settings, self.store
        stale = store.stale_pending(settings.receipt_sweep_after_seconds, now=now)
        for task_id in stale:
            publish(task_id)
            store.mark_enqueued(task_id)
        stuck = stuck_tasks(self.client, settings.archive_stuck_after_seconds, now=now)
        for task_id in stuck:
            publish(task_id)
            touch_inflight(self.client, task_id, now=now)
        waiting = [t for t in self._waiting_without_lease(now) if t not in {*stale, *stuck}]
        for task_id in waiting:
            publish(task_id)
        for task_id in {*stale, *stuck, *waiting}:
            store.touch_open(task_id, now=now)  # each waits its turn again
        if stale or stuck or waiting:
            log.info("archive_sweep", receipts=len(stale), stuck=len(stuck), open=len(waiting))
        return {"receipts": len(stale), "stuck": len(stuck), "open": len(waiting)}

    def _waiting_without_lease(self, now: float | None) -> list[str]:
        after = self.settings.archive_reenqueue_after_seconds
        candidates = self.store.stale_open(after, now=now)
        return [task_id for task_id in candidates if not Lease.held(self.client, task_id)]


def _transient(exc: BaseException) -> TransientError:
    """``exc`` as a :class:`TransientError` (a soft time limit or a Redis error is one)."""
    if isinstance(exc, TransientError):
        return exc
    if isinstance(exc, redis.RedisError):
        return TransientError(repr(exc), reason=Reason.REDIS_UNAVAILABLE)
    return TransientError(repr(exc))  # the soft time limit


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
