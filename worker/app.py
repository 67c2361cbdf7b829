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
- The timing settings are checked at start (:func:`worker.timeouts.check_timeouts`): a
  combination under which a message could be redelivered while still held fails
  :func:`create_celery` with one line naming the variables.
- Shutdown: ``worker_soft_shutdown_timeout`` (``WORKER_SOFT_SHUTDOWN_SECONDS``, 45 s) gives
  running tasks that long, then cancels them and their messages go back to the queue. Deployments
  set ``REMAP_SIGTERM=SIGQUIT`` so the orchestrator's SIGTERM starts this (instead of a warm
  shutdown that waits for every task and is cut by SIGKILL at the grace period); the grace
  period (k8s ``terminationGracePeriodSeconds`` 120, compose ``stop_grace_period`` 60) exceeds
  it by at least :data:`SHUTDOWN_MARGIN_SECONDS`.
- Prefork children are replaced after ``WORKER_MAX_TASKS_PER_CHILD`` tasks (1000) or a task
  that left them above ``WORKER_MAX_MEMORY_PER_CHILD_MIB`` (512 MiB resident): a slow leak or
  one large result parsed in memory costs a fork, not an OOM kill of the pod mid-task.
- Results are ignored; only ids and plain JSON cross the broker.
- Redis restarts: the worker reconnects forever (``broker_connection_max_retries=None``;
  Celery's default gives up after 100 tries) and keeps running tasks running
  (``worker_cancel_long_running_tasks_on_connection_loss`` stays off: their files are resumable,
  and killing them would only waste the download). :func:`guard_redis_channels` fixes the
  crash that used to follow: see its docstring.
- A worker killed whole gives its unacknowledged messages back within seconds, not after the
  visibility timeout: :mod:`worker.recovery`.
- Retries are published with a patient policy (:data:`PUBLISH_RETRY_POLICY`): a retry sent
  while Redis restarts waits for it instead of failing the task.
- Task events are off (``worker_send_task_events``): they cost three broker publishes per
  task for a consumer that is usually absent. Flower switches them on in the workers while it
  runs (its ``enable_events``, by a broadcast every few seconds), and ``celery -A
  worker.celery_app control enable_events`` does so by hand. The pipeline's own metrics
  (``docs/metrics.md``) do not depend on them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar

import pydantic
import redis
import structlog
from celery import Celery
from celery.signals import task_prerun, task_received, worker_ready, worker_shutdown

from core.broker import broker_config
from core.logs import configure_logging
from core.queues import ARCHIVE_TASK
from core.redis_client import connect
from core.settings import Settings, load_settings, settings_error
from worker import metrics
from worker.recovery import Incarnation, broker_restorer
from worker.timeouts import check_timeouts, time_limits

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
        return connect(self.settings.redis_url, health_check_interval=30)

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


SHUTDOWN_MARGIN_SECONDS = 15.0
"""Cancelling tasks, requeueing their messages and retiring take at most this long (s)."""

PUBLISH_RETRY_POLICY: dict[str, float | None] = {
    "max_retries": 60,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 2,
}
"""Publishing from a worker (retries, the sweep): about two minutes of reconnecting."""


def guard_redis_channels() -> None:
    """Let a kombu Redis channel reach Redis after its connection was closed (idempotent).

    Root cause of "Unrecoverable error: AttributeError: 'NoneType' object has no attribute
    'hostname'" when Redis restarts while a task runs: on connection loss the consumer closes
    its connection; closing a channel (kombu ``virtual.Channel.close``) restores its
    unacknowledged messages, and a task that finishes later acknowledges its message on that
    old channel. Both need a Redis client, which kombu's Redis ``Channel`` builds from
    ``self.connection.client`` in ``_connparams``; but the closed channel's pools were
    discarded and its transport has lost its ``client`` (``Connection._do_close_transport``)
    or the channel its ``connection`` (``Transport.close_channel``), so ``_connparams``
    dereferences None. The AttributeError is not a connection error, so Celery treats it as
    fatal and the worker exits. Idle workers have nothing to restore or acknowledge: they
    survive, as the tester saw.

    The guard: a channel remembers the parameters it connected with and uses them when its
    connection is gone. In Redis, an acknowledgement is an ``HDEL``/``ZREM`` by delivery tag
    on the shared ``unacked`` keys, valid from any connection, so the late acknowledgement
    reaches the restarted server (or fails as a connection error while it is down, which
    Celery logs and survives; the message then stays unacknowledged, never lost).
    """
    from kombu.transport import redis as kombu_redis

    channel_class: Any = kombu_redis.Channel
    if getattr(channel_class, "_asr_guarded", False):
        return
    original = channel_class._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        saved: dict[bool, dict[str, Any]] = self.__dict__.setdefault("_asr_connparams", {})
        transport = self.connection
        if (transport is None or transport.client is None) and asynchronous in saved:
            return dict(saved[asynchronous])
        params: dict[str, Any] = original(self, asynchronous)
        saved[asynchronous] = dict(params)
        return params

    channel_class._connparams = _connparams
    channel_class._asr_guarded = True


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
    soft_limit, hard_limit = time_limits(settings)
    return {
        **broker_config(settings),
        # A task may run twice; a killed worker's message must come back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One unstarted message per process: a dead worker strands at most that many.
        "worker_prefetch_multiplier": 1,
        "worker_direct": True,  # each worker also consumes <node>.dq2: worker/health.py
        # Killed before the visibility timeout redelivers the message (worker/timeouts.py).
        "task_soft_time_limit": soft_limit,
        "task_time_limit": hard_limit,
        # Shutdown below the orchestrator's grace period: tasks cancelled, messages requeued.
        "worker_soft_shutdown_timeout": settings.worker_soft_shutdown_seconds,
        # Bounded leaks: a child is replaced after N tasks or above the resident size (KiB).
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child,
        "worker_max_memory_per_child": settings.worker_max_memory_per_child_mib * 1024,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,  # structlog writes JSON lines to stdout itself
        "worker_send_task_events": False,  # Flower turns them on while it runs (docstring)
        "beat_schedule": beat_schedule(settings.sweep_interval_seconds),
        "timezone": "UTC",
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
    }


def create_celery(settings: Settings | None = None) -> AsrCelery:
    """Build the Celery app for ``settings`` (default: read from the environment).

    Configures logging and connects the worker's signal handlers (both idempotent). Raises
    :class:`core.settings.SettingsError` (one line naming the variables) for an invalid setting
    or timing settings that clash (:func:`worker.timeouts.check_timeouts`).
    """
    if settings is None:
        try:
            settings = load_settings()
        except pydantic.ValidationError as exc:
            raise settings_error(exc) from None
    check_timeouts(settings)
    configure_logging(settings.log_format)
    guard_redis_channels()
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
        metrics.prime()
        metrics.serve(settings.worker_metrics_port, settings.prometheus_multiproc_dir)
        structlog.get_logger(__name__).info("metrics served", port=settings.worker_metrics_port)


def _incarnation(app: Any) -> Incarnation | None:
    """This worker's :class:`~worker.recovery.Incarnation` (Redis brokers only), built once."""
    settings: Settings = app.settings
    if not settings.broker_url.startswith(("redis", "sentinel")):
        return None
    found: Incarnation = app.per_process(
        "incarnation", lambda: Incarnation(app.redis, settings.worker_heartbeat_seconds)
    )
    return found


def _record_delivery(sender: Any, request: Any, **_: Any) -> None:
    """Record the delivery tag of a received message under this worker's incarnation."""
    incarnation = _incarnation(sender.app)
    tag = getattr(getattr(request, "message", None), "delivery_tag", None)
    if incarnation is None or not tag:
        return
    try:
        incarnation.received(str(tag))
    except redis.RedisError as exc:  # Redis restarting: the visibility timeout still applies
        structlog.get_logger(__name__).warning("delivery_not_recorded", error=repr(exc))


def _start_recovery(sender: Any, **_: Any) -> None:
    """Announce this worker and restore dead workers' messages, now and every period."""
    incarnation = _incarnation(sender.app)
    if incarnation is not None:
        restore = broker_restorer(sender.app)
        threading.Thread(target=incarnation.run, args=(restore,), daemon=True).start()


def _retire(sender: Any, **_: Any) -> None:
    """Forget this worker's incarnation at a warm shutdown."""
    app = getattr(sender, "app", None)
    incarnation = _incarnation(app) if app is not None else None
    if incarnation is not None:
        incarnation.retire()


def connect_signals() -> None:
    """Connect the handlers above to Celery's signals (once per process: ``dispatch_uid``)."""
    task_prerun.connect(_bind_task_context, dispatch_uid="asr_ingest.bind_task_context")
    worker_ready.connect(_serve_metrics, dispatch_uid="asr_ingest.serve_metrics")
    task_received.connect(_record_delivery, dispatch_uid="asr_ingest.record_delivery")
    worker_ready.connect(_start_recovery, dispatch_uid="asr_ingest.start_recovery")
    worker_shutdown.connect(_retire, dispatch_uid="asr_ingest.retire")
