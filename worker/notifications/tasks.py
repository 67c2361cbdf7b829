"""Celery adapter: ``asr_ingest.notify(task_id)`` on queue ``archive``.

Transient failures (no answer, 429, 5xx) retry with full-jitter backoff
(:func:`worker.notifications.service.backoff_seconds`) for ``NOTIFY_MAX_ATTEMPTS`` attempts,
then dead-letter; any other answer dead-letters at once.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from core.errors import PermanentError, TransientError
from core.queues import ARCHIVE_QUEUE, NOTIFY_TASK
from worker.notifications.service import NotifyService, backoff_seconds


def service(app: Any) -> NotifyService:
    """The notify service of ``app`` (built once per process, kept on the app)."""
    built: NotifyService = app.per_process(
        "notify_service", lambda: NotifyService.build(app.settings, app.redis)
    )
    return built


@shared_task(  # type: ignore[untyped-decorator]  # Celery is untyped
    bind=True, name=NOTIFY_TASK, queue=ARCHIVE_QUEUE, acks_late=True,
    reject_on_worker_lost=True, ignore_result=True, max_retries=None,
)  # fmt: skip
def notify(self: Task, task_id: str) -> str:
    """Announce one archived task; returns the outcome (``sent``, ``dead``, ...)."""
    notifying = service(self.app)
    attempt = self.request.retries + 1
    try:
        return notifying.announce(task_id)
    except PermanentError as exc:
        return notifying.give_up(task_id, exc, attempt)
    except TransientError as exc:
        if attempt >= self.app.settings.notify_max_attempts:
            return notifying.give_up(task_id, exc, attempt)
        raise self.retry(exc=exc, countdown=backoff_seconds(self.request.retries)) from exc
