"""Broker configuration: one derivation for publishers (the webhook) and workers.

Brokers (README, "Brokers"): Redis (``redis://``, ``rediss://``, ``unix://``), Redis behind
Sentinel (``redis+sentinel://``, see :mod:`core.redis_client`), RabbitMQ (``amqp://``,
``amqps://``). :func:`broker_url` and :func:`transport_options` turn the settings into kombu's
spelling; :func:`broker_config` adds what publishers and workers must agree on.

Delivery guarantees (Celery user guide, "Tasks" → ``acks_late``; kombu's transports):

- Redis transport ``visibility_timeout`` (``BROKER_VISIBILITY_TIMEOUT_SECONDS``, default
  3600 s): an unacknowledged message is redelivered after this long (within a further 10 s:
  workers scan for such messages every 10 s).
- RabbitMQ: durable classic queues and persistent messages, so a restarted node still holds
  every message it confirmed; publishers wait for the confirm (``confirm_publish``), so the
  webhook answers 200 only for a message the broker has taken. An unacknowledged message goes
  back to its queue as soon as the consumer's connection closes.
- Queues ``archive`` and ``submit`` are bound to direct exchanges of their own names
  (``task_create_missing_queues`` is off, so a typo in a queue name fails loudly).
- Only plain JSON crosses the broker; results are ignored.

:func:`publisher` is a Celery app without task modules: enough to publish by task name
(:mod:`core.queues`) and to check that the broker answers.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]  # kombu has no type hints

from core.queues import ARCHIVE_QUEUE, SUBMIT_QUEUE
from core.redis_client import is_sentinel_url, parse_sentinel_url
from core.settings import Settings

PUBLISH_TIMEOUT_SECONDS = 2.0
"""Socket connect/read timeout for publishing from a request: a dead broker answers fast."""

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")

AMQP_HEARTBEAT_SECONDS = 30
"""AMQP heartbeat of worker connections (Celery's default is 120 s): a broker that vanished
without closing the socket (a partition, a killed VM) is noticed within about 2 x 30 s, and
the worker reconnects. Publishers (the webhook) use none: they hold a connection only between
requests, and a stale one fails on the next publish, which is retried once on a fresh one."""


def _queue(name: str) -> Queue:
    """A queue bound to its own direct exchange under its own name as routing key."""
    exchange = Exchange(name, type="direct")  # type: ignore[no-untyped-call]  # kombu is untyped
    return Queue(name, exchange, routing_key=name)  # type: ignore[no-untyped-call]  # likewise


def is_amqp(url: str) -> bool:
    """True when ``url`` (a broker URL) names RabbitMQ (``amqp://``, ``amqps://``)."""
    return url.partition("://")[0].lower() in AMQP_SCHEMES


def broker_url(settings: Settings) -> str:
    """kombu's broker URL: ``CELERY_BROKER_URL``, else ``REDIS_URL`` (``settings.broker_url``),
    with a ``redis+sentinel://`` URL spelled as kombu's ``sentinel://H1:P1;sentinel://H2:P2/DB``
    (its service name goes to :func:`transport_options`) and a ``master_name`` query parameter
    of a ``sentinel://`` URL moved there too."""
    url = settings.broker_url
    if is_sentinel_url(url):
        parsed = parse_sentinel_url(url)
        auth = ""
        if parsed.password is not None:
            auth = f"{quote(parsed.username or '', safe='')}:{quote(parsed.password, safe='')}@"
        return ";".join(f"sentinel://{auth}{h}:{p}/{parsed.db}" for h, p in parsed.sentinels)
    if url.startswith("sentinel://") and "?" in url:
        base, _, query = url.partition("?")
        rest = {k: v for k, v in parse_qs(query).items() if k != "master_name"}
        return f"{base}?{urlencode(rest, doseq=True)}" if rest else base
    return url


def _sentinel_options(settings: Settings) -> dict[str, Any]:
    """``master_name`` (and sentinel credentials) for a Sentinel broker, else nothing."""
    url = settings.broker_url
    if is_sentinel_url(url):
        parsed = parse_sentinel_url(url)
        options: dict[str, Any] = {"master_name": parsed.service}
        if parsed.sentinel_password is not None:
            options["sentinel_kwargs"] = {
                "username": parsed.sentinel_username,
                "password": parsed.sentinel_password,
            }
        return options
    if url.startswith("sentinel://"):
        names = parse_qs(url.partition("?")[2]).get("master_name")
        if names:
            return {"master_name": names[-1]}
        if is_sentinel_url(settings.redis_url):
            return {"master_name": parse_sentinel_url(settings.redis_url).service}
        raise ValueError("CELERY_BROKER_URL: a sentinel:// URL needs ?master_name=NAME")
    return {}


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu transport options for :func:`broker_url` (Redis or AMQP, whichever it names)."""
    if is_amqp(settings.broker_url):
        # Publisher confirms: basic.publish returns once the broker has the message (for a
        # persistent message on a durable queue: written to disk), so nothing is answered
        # 200 that a broker restart can lose. One round trip per publish.
        return {"confirm_publish": True}
    return {
        "visibility_timeout": settings.broker_visibility_timeout_seconds,
        # Scan for expired unacked messages every 10 s (kombu's default scans every
        # 10 s x throttle 10), and let a dead worker's restore mutex lapse after 60 s
        # instead of 300 s: a killed worker's messages come back soon after the timeout.
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 60,
        **_sentinel_options(settings),
    }


def broker_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings that publishers and workers must agree on."""
    url = broker_url(settings)
    return {
        "broker_url": url,
        # Celery reads CELERY_BROKER_URL from the environment over broker_url; the read and
        # write URLs win over both, so the derived spelling (sentinel://, no master_name
        # query) is what connects, whatever the environment says.
        "broker_read_url": url,
        "broker_write_url": url,
        "broker_transport_options": transport_options(settings),
        # A worker never gives up on its broker (Celery's default is 100 attempts, then the
        # worker exits): it reconnects until the broker is back, however long that takes;
        # the liveness probe (worker/health.py) judges whether it still consumes.
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        # A channel error (RabbitMQ closing a channel: consumer_timeout, a lost queue) is
        # handled like a lost connection: reconnect, instead of a worker that stops.
        "broker_channel_error_retry": True,
        "broker_heartbeat": AMQP_HEARTBEAT_SECONDS,
        # Celery's default, spelled out because its default changes in Celery 6: on a lost
        # connection a running task is not cancelled. RabbitMQ requeues its message at once and
        # another worker may take it, but the archive task's lease (worker/archiving/lease.py)
        # makes that copy answer "busy" while this one finishes and writes the manifest; a
        # cancelled task would instead leave its lease to expire and, on Redis, its message
        # to wait out the visibility timeout. Classic queues, not quorum queues: a quorum
        # queue replicates only across a cluster of three or more nodes, refuses global QoS
        # and needs Celery's native delayed delivery for countdowns (our retries); on one
        # node a durable classic queue keeps the same messages across a restart.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
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
    if is_amqp(config["broker_url"]):  # py-amqp's names; waits for a confirm are reads
        timeouts = {
            "read_timeout": PUBLISH_TIMEOUT_SECONDS,
            "write_timeout": PUBLISH_TIMEOUT_SECONDS,
        }
    else:
        timeouts = {
            "socket_timeout": PUBLISH_TIMEOUT_SECONDS,
            "socket_connect_timeout": PUBLISH_TIMEOUT_SECONDS,
        }
    config["broker_transport_options"].update(timeouts)
    app.conf.update(
        config, broker_connection_timeout=PUBLISH_TIMEOUT_SECONDS, task_send_sent_event=False
    )
    return app
