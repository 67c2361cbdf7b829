"""Exactly-once intake: store the receipt in Redis and leave one archive message, or answer 503.

Two paths (receipt states in :mod:`core.store`); :func:`create_intake` picks one per app.

**One round trip** (:class:`AtomicIntake`), when the Celery broker is the Redis database of
``REDIS_URL`` (the default; :func:`webhook.messages.broker_is_redis_store`). One Lua script
(:meth:`ReceiptStore.claim_enqueued`) checks the ``task_id``, stores the raw body and
``LPUSH``-es the archive message (:class:`webhook.messages.ArchiveMessages`) onto kombu's list.
Redis runs a script whole or not at all, and both keys live in one database (persisted or lost
together), so there is no crash window: the receipt is stored as ``enqueued`` and never pending; a
repeat is a ``duplicate`` that pushes nothing; a Redis error means nothing is stored (503
``redis_unavailable``). Why (``tests/benchmarks/webhook_bench.py --profile``, CPU per delivery):
Celery's ``send_task`` costs 0.7 to 1 ms (a broker client per publish, protocol-2 headers,
``saferepr``) and claim + mark two round trips of about 0.1 ms each; this path is one script call
(about 0.1 ms) and about 11 µs to fill in the message.

**Claim, publish, mark** (:class:`PublishingIntake`), for any other broker (another Redis server
or database, RabbitMQ), where no single operation spans the receipt and the queue:

1. :meth:`ReceiptStore.claim` stores the raw body in one Lua round trip, state ``received`` and
   pending; a repeat is a ``duplicate``. A Redis error here means nothing is stored: 503.
2. Publish ``asr_ingest.archive(task_id)`` on queue ``archive`` with ``send_task``. On failure
   the claim is released and the answer is 503, so EventBridge's retry is accepted afresh. If
   the release fails too, the receipt stays ``received`` in the pending set and the worker's
   sweep re-enqueues it; the retry is then a ``duplicate``, which is safe because it is stored.
3. :meth:`ReceiptStore.mark_enqueued` (``received`` → ``enqueued`` only, so a worker that already
   set ``archiving`` is not undone). The message is already on the broker, so a failure here
   still answers ``accepted``; the receipt stays pending and the sweep may enqueue a second
   message, which the idempotent archive task absorbs.

A crash between 1 and 2 leaves the receipt ``received`` and pending: the sweep re-enqueues it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

import redis
import structlog

from core.queues import ARCHIVE_QUEUE, ARCHIVE_TASK
from core.settings import Settings
from core.store import ReceiptStore
from webhook.admission import Envelope
from webhook.errors import BrokerUnavailable, StoreUnavailable
from webhook.messages import ArchiveMessages, broker_is_redis_store

log = structlog.get_logger(__name__)

Publish = Callable[[str], None]
Outcome = Literal["accepted", "duplicate"]

PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}
"""One immediate retry: it heals a pooled broker connection that went stale (a broker restart
or an idle timeout) yet keeps a dead broker's answer under a second or two, well inside the few
seconds EventBridge waits. Longer retries belong to EventBridge, which redelivers after a 503."""


class Intake(Protocol):
    """Takes one verified event: stored and one archive message, or an error and nothing."""

    def take(self, event: Envelope, body: bytes) -> Outcome:
        """``accepted`` (new) or ``duplicate``; ``body`` is the raw verified delivery.

        Raises :class:`StoreUnavailable` or :class:`BrokerUnavailable` (503).
        """
        ...


def create_intake(settings: Settings, store: ReceiptStore, celery: Any) -> Intake:
    """The one-round-trip intake when the broker is ``REDIS_URL``'s database, else publishing.

    ``celery`` is the app from :func:`core.broker.publisher`. Logs ``intake_path`` once.
    """
    if broker_is_redis_store(settings):
        try:
            messages = ArchiveMessages(celery)
        except RuntimeError as exc:  # an unexpected Celery message format: the slow, safe path
            log.warning("intake_path", path="publish", reason=str(exc))
        else:
            log.info("intake_path", path="atomic", queue_key=messages.queue_key)
            return AtomicIntake(store, messages)
    log.info("intake_path", path="publish")
    return PublishingIntake(store, archive_publisher(celery))


class AtomicIntake:
    """Claim and enqueue in one Lua script on the broker's own Redis database."""

    def __init__(self, store: ReceiptStore, messages: ArchiveMessages) -> None:
        self._store = store
        self._messages = messages

    def take(self, event: Envelope, body: bytes) -> Outcome:
        """Store ``body`` and push the archive message at once; see :class:`Intake`.

        Raises :class:`StoreUnavailable` when Redis fails (nothing stored, nothing pushed).
        """
        message = self._messages.render(event.task_id)
        try:
            claimed = self._store.claim_enqueued(
                event.task_id,
                body,
                queue_key=self._messages.queue_key,
                message=message,
                event_id=event.event_id,
                model=event.model,
            )
        except redis.RedisError as exc:
            raise StoreUnavailable(f"claim failed: {type(exc).__name__}") from exc
        return "accepted" if claimed else "duplicate"


def archive_publisher(celery: Any) -> Publish:
    """A function that publishes the archive message for one ``task_id`` by task name.

    ``celery`` is the app from :func:`core.broker.publisher`; only the ``task_id`` (str) crosses
    the broker. Raises whatever kombu raises when the broker is unreachable.
    """

    def publish(task_id: str) -> None:
        celery.send_task(
            ARCHIVE_TASK,
            args=[task_id],
            queue=ARCHIVE_QUEUE,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )

    return publish


class PublishingIntake:
    """Claim, publish with Celery, mark; see the module docstring for the guarantees."""

    def __init__(self, store: ReceiptStore, publish: Publish) -> None:
        self._store = store
        self._publish = publish

    def take(self, event: Envelope, body: bytes) -> Outcome:
        """Claim, publish and mark one event; see :class:`Intake`.

        Raises :class:`StoreUnavailable` when the claim fails (nothing stored) and
        :class:`BrokerUnavailable` when the publish fails (claim released).
        """
        try:
            claimed = self._store.claim(
                event.task_id, body, event_id=event.event_id, model=event.model
            )
        except redis.RedisError as exc:
            raise StoreUnavailable(f"claim failed: {type(exc).__name__}") from exc
        if not claimed:
            return "duplicate"
        try:
            self._publish(event.task_id)
        except Exception as exc:  # any publish failure: undo the claim, answer 503
            self._release(event.task_id)
            raise BrokerUnavailable(f"publish failed: {type(exc).__name__}") from exc
        self._mark_enqueued(event.task_id)
        return "accepted"

    def _release(self, task_id: str) -> None:
        try:
            self._store.release(task_id)
        except redis.RedisError as exc:
            log.warning("receipt_release_failed", task_id=task_id, error=type(exc).__name__)

    def _mark_enqueued(self, task_id: str) -> None:
        try:
            self._store.mark_enqueued(task_id)
        except redis.RedisError as exc:
            log.warning("receipt_mark_failed", task_id=task_id, error=type(exc).__name__)
