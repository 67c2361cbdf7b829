"""Celery tasks on queue ``submit``: submit one planned batch; sweep for lost callbacks.

Thin edges over :mod:`worker.submission.submitter` and :mod:`worker.submission.reconcile`:
load, call the domain function, apply the retry policy. Only ids cross the broker (a run id
and a batch number).
"""

from __future__ import annotations

from typing import Any

import redis
import structlog
from celery import Task, shared_task

from core.errors import PermanentError, TransientError
from core.queues import (
    ARCHIVE_QUEUE,
    ARCHIVE_TASK,
    RECONCILE_TASK,
    SUBMIT_BATCH_TASK,
    SUBMIT_QUEUE,
)
from core.store import ReceiptStore
from worker.app import AsrCelery
from worker.dashscope import DashScopeClient, DashScopeError
from worker.ratelimit import query_limiter
from worker.submission.reconcile import Reconciler, locked_sweep
from worker.submission.submissions import SubmissionStore
from worker.submission.submitter import BatchDeferred, Submitter

MAX_RETRIES = 8
log = structlog.get_logger(__name__)


def _submitter(app: AsrCelery) -> Submitter:
    """The submitter of ``app`` (built once per process, kept on the app)."""
    built: Submitter = app.per_process(
        "submitter", lambda: Submitter.from_settings(app.settings, app.redis)
    )
    return built


def retry_countdown(retries: int) -> float:
    """Seconds before retry number ``retries + 1``: 2, 4, 8, ... capped at 300."""
    return float(min(300, 2 ** (retries + 1)))


def _failure_reason(exc: PermanentError) -> str:
    if isinstance(exc, DashScopeError) and exc.code:
        return exc.code
    return exc.reason


@shared_task(  # type: ignore[untyped-decorator]  # Celery is untyped
    bind=True, name=SUBMIT_BATCH_TASK, queue=SUBMIT_QUEUE, max_retries=MAX_RETRIES
)
def submit_batch(self: Task, run_id: str, n: int) -> str | None:
    """Upload, sign and submit one batch; transient failures retry, then fail the batch.

    A deferred batch (breaker open, an unanswered submit being resolved) is sent again with
    a countdown and no retry counted: its files stay pending.
    """
    app: AsrCelery = self.app
    store = SubmissionStore(app.redis, app.settings.submission_ttl_seconds)
    try:
        return _submitter(app).submit_batch(run_id, n)
    except BatchDeferred as deferred:
        # Not a failure: send the batch again later, with its retry count untouched.
        self.apply_async(args=[run_id, n], countdown=deferred.seconds, queue=SUBMIT_QUEUE)
        log.info(
            "batch_deferred",
            run_id=run_id,
            batch=n,
            reason=deferred.reason,
            seconds=round(deferred.seconds, 1),
        )
        return None
    except (TransientError, redis.RedisError) as exc:
        if self.request.retries >= MAX_RETRIES:
            store.fail_batch(run_id, n, getattr(exc, "reason", "redis_unavailable"))
            return None
        countdown = retry_countdown(self.request.retries)
        raise self.retry(exc=exc, countdown=countdown, queue=SUBMIT_QUEUE) from exc
    except (PermanentError, ValueError) as exc:
        reason = _failure_reason(exc) if isinstance(exc, PermanentError) else "bad_request"
        store.fail_batch(run_id, n, reason)
        return None


@shared_task(bind=True, name=RECONCILE_TASK, queue=SUBMIT_QUEUE)  # type: ignore[untyped-decorator]  # Celery is untyped
def reconcile(self: Task) -> dict[str, Any]:
    """Archive finished tasks of the account whose event never came (see
    :mod:`worker.submission.reconcile`)."""
    app: AsrCelery = self.app
    settings = app.settings
    if settings.dashscope_api_key is None:
        return {}
    with DashScopeClient.from_settings(settings) as client:
        reconciler = Reconciler(
            ReceiptStore(app.redis, settings.dedupe_ttl_seconds),
            SubmissionStore(app.redis, settings.submission_ttl_seconds),
            client,
            query_limiter(app.redis, settings.dashscope_query_qps),
            publish=lambda task_id: _publish_archive(app, task_id),
            redis_client=app.redis,
            lookback_s=settings.reconcile_lookback_seconds,
            grace_s=settings.reconcile_after_seconds,
        )
        report = locked_sweep(app.redis, reconciler)
    return {
        "archived": len(report.archived),
        "pending": len(report.pending),
        "lost": len(report.lost),
        "queries": report.queries,
        "pages": report.pages,
    }


def _publish_archive(app: AsrCelery, task_id: str) -> None:
    app.send_task(ARCHIVE_TASK, args=[task_id], queue=ARCHIVE_QUEUE)
