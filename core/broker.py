"""Broker configuration: one derivation for publishers (the webhook) and workers.

Delivery guarantees (Celery user guide, "Tasks" → ``acks_late``; kombu's Redis transport):

- Redis transport ``visibility_timeout`` (``BROKER_VISIBILITY_TIMEOUT_SECONDS``, default
  3600 s): an unacknowledged message is redelivered after this long (within a further 10 s:
  workers scan for such messages every 10 s).
- Queues ``archive`` and ``submit`` are bound to direct exchanges of their own names
  (``task_create_missing_queues`` is off, so a typo in a queue name fails loudly).
- Only plain JSON crosses the broker; results are ignored.

:func:`publisher` is a Celery app without task modules: enough to publish by task name
(:mod:`core.queues`) and to check that the broker answers.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]  # kombu has no type hints

from core.queues import ARCHIVE_QUEUE, SUBMIT_QUEUE
from core.settings import Settings

PUBLISH_TIMEOUT_SECONDS = 2.0
"""Socket connect/read timeout for publishing from a request: a dead broker answers fast."""


def _queue(name: str) -> Queue:
    """A queue bound to its own direct exchange under its own name as routing key."""
    exchange = Exchange(name, type="direct")  # type: ignore[no-untyped-call]  # kombu is untyped
    return Queue(name, exchange, routing_key=name)  # type: ignore[no-untyped-call]  # likewise


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu transport options for ``settings.broker_url`` (Redis options; AMQP ignores them)."""
    return {
        "visibility_timeout": settings.broker_visibility_timeout_seconds,
        # Scan for expired unacked messages every 10 s (kombu's default scans every
        # 10 s x throttle 10), and let a dead worker's restore mutex lapse after 60 s
        # instead of 300 s: a killed worker's messages come back soon after the timeout.
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 60,
    }


def broker_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings that publishers and workers must agree on."""
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options(settings),
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "task_default_queue": ARCHIVE_QUEUE,
        "task_queues": [_queue(ARCHIVE_QUEUE), _queue(SUBMIT_QUEUE)],
        "task_create_missing_queues": False,
        "timezone": "UTC",
    }


def publisher(settings: Settings) -> Celery:
    """A Celery app that only publishes, tuned for a request: 2 s broker timeouts.

    It loads no task module. A "task-sent" event would be a second broker publish per
    delivery (about a third of the publish cost, measured by
    ``tests/benchmarks/webhook_bench.py --profile``), so it is off; the worker's own events
    (received, started, succeeded) still reach Flower.
    """
    app = Celery("asr_ingest", set_as_current=False)
    config = broker_config(settings)
    config["broker_transport_options"].update(
        socket_timeout=PUBLISH_TIMEOUT_SECONDS, socket_connect_timeout=PUBLISH_TIMEOUT_SECONDS
    )
    app.conf.update(
        config, broker_connection_timeout=PUBLISH_TIMEOUT_SECONDS, task_send_sent_event=False
    )
    return app
