"""Celery tasks of archiving: short adapters over :class:`worker.archiving.service.ArchiveService`.

``asr_ingest.archive(task_id, replay=False)`` on queue ``archive``: build (once per process) or
reuse the service, run one attempt, and turn :class:`~worker.archiving.service.RetryLater` into
a Celery retry with full-jitter backoff. The task's own ``max_retries`` is None: the attempts
limit is the service's (``ARCHIVE_MAX_ATTEMPTS``), never Celery's class default of 3.
``replay`` archives again even when a manifest exists.

``asr_ingest.archive_sweep()`` (beat): :meth:`ArchiveService.sweep`.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from celery import Task, shared_task

from core.errors import PermanentError
from core.queues import ARCHIVE_QUEUE, ARCHIVE_SWEEP_TASK, ARCHIVE_TASK, NOTIFY_TASK
from worker import metrics
from worker.archiving.dlq import DeadLetters
from worker.archiving.service import ArchiveService, RetryLater, build_service

log = structlog.get_logger(__name__)


def service(app: Any) -> ArchiveService:
    """The archive service of ``app`` (built once per process, kept on the app)."""
    built: ArchiveService = app.per_process(
        "archive_service", lambda: build_service(app.settings, app.redis)
    )
    return built


@shared_task(  # type: ignore[untyped-decorator]  # Celery is untyped
    bind=True, name=ARCHIVE_TASK, queue=ARCHIVE_QUEUE, acks_late=True,
    reject_on_worker_lost=True, ignore_result=True, max_retries=None,
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
        archiving = service(task.app)
    except PermanentError as exc:  # bad ARCHIVE_URLS or OSS settings: keep the task replayable
        DeadLetters(task.app.redis).add(task_id, exc.reason, 1, str(exc))
        return "dead"
    retries = task.request.retries
    try:
        outcome = archiving.archive(task_id, attempt=retries + 1, replay=replay)
    except RetryLater as again:
        countdown = archiving.backoff_seconds(retries)
        raise task.retry(exc=again.error, countdown=countdown) from again.error
    if outcome in ANNOUNCED and task.app.settings.notify_url:
        task.app.send_task(NOTIFY_TASK, args=[task_id], queue=ARCHIVE_QUEUE)
    return outcome


ANNOUNCED = frozenset({"archived", "already_archived", "dead"})
"""Outcomes after which a manifest may exist: announce it (``asr_ingest.notify`` skips tasks
without a manifest and tasks already announced)."""


@shared_task(bind=True, name=ARCHIVE_SWEEP_TASK, queue=ARCHIVE_QUEUE, ignore_result=True)  # type: ignore[untyped-decorator]  # Celery is untyped
def archive_sweep(self: Task) -> dict[str, int]:
    """Re-enqueue receipts that never reached a worker and archiving whose lease died."""
    return sweep_once(self.app)


def sweep_once(app: Any, *, now: float | None = None) -> dict[str, int]:
    """One sweep; returns ``{"receipts": n, "stuck": m}`` re-enqueued."""

    def publish(task_id: str) -> None:
        app.send_task(ARCHIVE_TASK, args=[task_id], queue=ARCHIVE_QUEUE)

    return service(app).sweep(publish, now=now)
