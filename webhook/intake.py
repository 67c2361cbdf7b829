"""Exactly-once intake: claim the receipt in Redis, publish one archive message, mark it.

Order and failure handling (the issue's "Exactly-once intake"; receipt states in
:mod:`worker.store`):

1. :meth:`ReceiptStore.claim` stores the raw body in one Lua round trip; a repeat is a
   ``duplicate``. A Redis error here means nothing is stored: 503, nothing to undo.
2. Publish ``asr_ingest.archive(task_id)`` on queue ``archive``. On failure the claim is
   released and the answer is 503, so EventBridge's retry is accepted afresh. If the release
   fails too, the receipt stays ``received`` in the pending set and the worker's sweep
   re-enqueues it; the retry is then a ``duplicate``, which is safe because it is stored.
3. :meth:`ReceiptStore.mark_enqueued`. The message is already on the broker, so a failure
   here still answers ``accepted``; the receipt stays pending and the sweep may enqueue a
   second message, which the idempotent archive task absorbs.

A crash between 1 and 2 leaves the receipt ``received`` and pending: the sweep re-enqueues it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import redis
import structlog

from webhook.errors import BrokerUnavailable, StoreUnavailable
from webhook.events import Event
from worker.queues import ARCHIVE_QUEUE, ARCHIVE_TASK
from worker.store import ReceiptStore

log = structlog.get_logger(__name__)

Publish = Callable[[str], None]

PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}
"""One immediate retry: it heals a pooled broker connection that went stale (a broker restart
or an idle timeout) yet keeps a dead broker's answer under a second or two, well inside the few
seconds EventBridge waits. Longer retries belong to EventBridge, which redelivers after a 503."""


def archive_publisher(celery: Any) -> Publish:
    """A function that publishes the archive message for one ``task_id`` by task name.

    ``celery`` is the app from :func:`worker.create_celery`; only the ``task_id`` (str) crosses
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


class Intake:
    """Store-then-enqueue for verified events; see the module docstring for the guarantees."""

    def __init__(self, store: ReceiptStore, publish: Publish) -> None:
        self._store = store
        self._publish = publish

    def take(self, event: Event, body: bytes) -> Literal["accepted", "duplicate"]:
        """Claim, publish and mark one event; ``body`` is the raw verified delivery.

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
