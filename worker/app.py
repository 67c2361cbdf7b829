"""The Celery application factory.

Delivery guarantees (Celery user guide, "Tasks" → ``acks_late``; kombu's Redis transport):

- ``task_acks_late`` and ``task_reject_on_worker_lost``: a message is acknowledged only after
  the task returns, and a worker killed mid-task puts it back on the queue. Tasks are
  idempotent, so running one twice is harmless.
- Redis transport ``visibility_timeout`` (``BROKER_VISIBILITY_TIMEOUT_SECONDS``, default 3600 s):
  an unacknowledged message is redelivered after this long (within a further 10 s: workers scan
  for such messages every 10 s). The hard time limit is 90 % of it
  and the soft limit 80 %, so a task is always killed before its message becomes visible again.
- ``worker_prefetch_multiplier = 1``: a worker holds one unstarted message per process, so a
  dead worker strands at most that many for one visibility timeout.
- Results are ignored; only ids and plain JSON cross the broker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar

import redis
import structlog
from celery import Celery
from celery.signals import task_prerun, worker_ready

from core.broker import broker_config
from core.logs import configure_logging
from core.queues import ARCHIVE_TASK
from core.settings import Settings, load_settings
from worker import metrics

T = TypeVar("T")

TASK_MODULES: list[str] = [
    "worker.submission.tasks",
    "worker.archiving.tasks",
    "worker.notifications.tasks",
    "worker.health",
]
"""Modules holding ``shared_task`` definitions, imported by the worker at start."""

BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    # worker.submission.reconcile: archive submitted tasks whose completion event never came.
    "reconcile-submitted-tasks": {
        "task": "asr_ingest.reconcile",
        "schedule": 30.0,
        "options": {"queue": "submit", "expires": 25.0},
    },
    # worker.archiving.tasks: re-enqueue receipts that never reached a worker and stuck archiving.
    "archive-sweep": {
        "task": "asr_ingest.archive_sweep",
        "schedule": 30.0,
        "options": {"queue": "archive", "expires": 25.0},
    },
}
"""Periodic tasks for ``celery beat``, filled in by the modules that define them."""


class AsrCelery(Celery):  # type: ignore[misc]  # Celery is untyped
    """Celery with the project's settings and its per-process clients attached.

    This is the one place that holds process-wide state of a worker: the Redis client and the
    feature services (:meth:`per_process`). Everything is built on first use, in the process
    that uses it (after the prefork pool forks), never at import.
    """

    settings: Settings

    @cached_property
    def redis(self) -> redis.Redis:
        """Client for ``REDIS_URL`` (receipts, locks, rate-limit buckets, dead letters)."""
        return redis.Redis.from_url(self.settings.redis_url, health_check_interval=30)

    @cached_property
    def _per_process(self) -> tuple[threading.Lock, dict[str, Any]]:
        return threading.Lock(), {}

    def per_process(self, name: str, build: Callable[[], T]) -> T:
        """The object ``name`` of this app, built by ``build`` once (thread-safe)."""
        lock, built = self._per_process
        with lock:
            if name not in built:
                built[name] = build()
            found: T = built[name]
            return found


def beat_schedule(interval_s: float) -> dict[str, dict[str, Any]]:
    """:data:`BEAT_SCHEDULE` with every entry run each ``interval_s`` seconds.

    A sweep that waits in the queue longer than 90 % of the interval expires: the next one
    does the same work.
    """
    schedule = {}
    for name, entry in BEAT_SCHEDULE.items():
        options = {**entry.get("options", {}), "expires": interval_s * 0.9}
        schedule[name] = {**entry, "schedule": interval_s, "options": options}
    return schedule


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration for ``settings`` (see the module docstring for the reasoning)."""
    visibility = settings.broker_visibility_timeout_seconds
    return {
        **broker_config(settings),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_direct": True,  # each worker also consumes <node>.dq2: worker/health.py
        "task_soft_time_limit": int(visibility * 0.8),
        "task_time_limit": int(visibility * 0.9),
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,  # structlog writes JSON lines to stdout itself
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "beat_schedule": beat_schedule(settings.sweep_interval_seconds),
        "timezone": "UTC",
    }


def create_celery(settings: Settings | None = None) -> AsrCelery:
    """Build the Celery app for ``settings`` (default: read from the environment).

    Configures logging and connects the worker's signal handlers (both idempotent).
    """
    settings = settings or load_settings()
    configure_logging(settings.log_format)
    connect_signals()
    app = AsrCelery("asr_ingest", include=TASK_MODULES)
    app.settings = settings
    app.conf.update(celery_config(settings))
    return app


def _bind_task_context(task_id: str, task: Any, args: Any = (), **_: Any) -> None:
    """Bind ``celery_id``, the task name and (archive tasks) ``task_id`` to log lines."""
    structlog.contextvars.clear_contextvars()
    bound = {"celery_id": task_id, "task": task.name}
    if task.name == ARCHIVE_TASK and args:
        bound["task_id"] = str(args[0])
    structlog.contextvars.bind_contextvars(**bound)


def _serve_metrics(sender: Any, **_: Any) -> None:
    """Serve the worker's metrics on ``WORKER_METRICS_PORT`` once the worker is ready."""
    settings: Settings = sender.app.settings
    if settings.worker_metrics_port is not None:
        metrics.serve(settings.worker_metrics_port, settings.prometheus_multiproc_dir)
        structlog.get_logger(__name__).info("metrics served", port=settings.worker_metrics_port)


def connect_signals() -> None:
    """Connect the handlers above to Celery's signals (once per process: ``dispatch_uid``)."""
    task_prerun.connect(_bind_task_context, dispatch_uid="asr_ingest.bind_task_context")
    worker_ready.connect(_serve_metrics, dispatch_uid="asr_ingest.serve_metrics")
