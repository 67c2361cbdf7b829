"""Announce one task: read its manifest, post the announcement once, remember it was sent.

Keys: ``asr:notify:sent:<task_id>`` (set after a 2xx answer, expires with ``DEDUPE_TTL_SECONDS``)
so a redelivered archive message does not announce again; dead letters under
``asr:notify:dlq`` (:class:`worker.archiving.dlq.DeadLetters` with its own key).
Delivery is at least once: a worker killed after the receiver's 2xx and before the flag posts
again, with the same ``webhook-id``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import redis
import structlog

from core.errors import PermanentError, PipelineError
from core.settings import Settings
from worker import metrics
from worker.archiving import manifest as mf
from worker.archiving.destinations import Destination, open_destinations
from worker.archiving.dlq import DeadLetters
from worker.notifications.payload import announcement, webhook_id
from worker.notifications.sender import Notifier

SENT_KEY = "asr:notify:sent:{task_id}"
DLQ_KEY = "asr:notify:dlq"
RETRY_BASE_SECONDS, RETRY_MAX_SECONDS = 5.0, 600.0

NotifyOutcome = Literal["sent", "already_sent", "no_manifest", "dead"]
log = structlog.get_logger(__name__)


def backoff_seconds(retries: int) -> float:
    """Full-jitter backoff before retry ``retries + 1``: up to 5 s * 2**retries, capped at 600 s."""
    return random.uniform(0, min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2**retries))


@dataclass
class NotifyService:
    """Announces tasks of one worker process (thread-safe members)."""

    settings: Settings
    client: redis.Redis
    destinations: list[Destination]
    notifier: Notifier

    @classmethod
    def build(cls, settings: Settings, client: redis.Redis) -> NotifyService:
        """The service for ``settings``; raises :class:`PermanentError` when not configured."""
        if not settings.notify_url or settings.notify_secret is None:
            raise PermanentError("NOTIFY_URL and NOTIFY_SECRET must both be set")
        notifier = Notifier(settings.notify_url, settings.notify_secret.get_secret_value())
        return cls(settings, client, open_destinations(settings), notifier)

    def announce(self, task_id: str) -> NotifyOutcome:
        """Post ``task_id``'s announcement unless it was sent; raises the sender's errors."""
        sent_key = SENT_KEY.format(task_id=task_id)
        if self.client.exists(sent_key):
            return "already_sent"
        raw = self.destinations[0].get_bytes(mf.manifest_key(task_id))
        if raw is None:
            log.warning("notify_without_manifest", task_id=task_id)
            return "no_manifest"
        urls = [d.url for d in self.destinations]
        now = datetime.now(UTC)
        body = announcement(mf.decode(raw), urls, now.isoformat().replace("+00:00", "Z"))
        try:
            self.notifier.send(webhook_id(task_id), body, now=now)
        except PipelineError as exc:
            metrics.notify_failed(str(exc.reason))
            raise
        self.client.set(sent_key, "1", ex=self.settings.dedupe_ttl_seconds)
        metrics.notify_sent()
        return "sent"

    def give_up(self, task_id: str, error: PipelineError, attempts: int) -> NotifyOutcome:
        """Dead-letter the announcement of ``task_id`` (``asr:notify:dlq``)."""
        DeadLetters(self.client, key=DLQ_KEY).add(task_id, error.reason, attempts, str(error))
        log.warning("notify_dead_letter", task_id=task_id, reason=error.reason, attempts=attempts)
        return "dead"
