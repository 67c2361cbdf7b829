"""Liveness that proves consumption: a ping task that must round-trip through the broker.

A worker can stay up, connected and answering remote-control pings, yet take no more tasks
(celery/celery#8030, #10205, #10302: after a Redis reconnect the consumer is never
re-registered). Only a task that travels the whole way shows that a worker consumes:

1. ``asr-ingest health --worker NODE`` (:mod:`asr_ingest.health_cmd`) publishes
   ``asr_ingest.health_ping(token)`` to exchange ``C.dq2`` with routing key ``NODE``: with
   ``worker_direct`` on (:func:`worker.app.celery_config`) each worker also consumes its own
   queue ``NODE.dq2``, so the message reaches this one worker and no other;
2. the worker's consumer takes it like any task (same connection, same QoS), a pool slot runs
   :func:`health_ping`, which writes the token to Redis (``REDIS_URL``);
3. the command sees the token and exits 0. The message carries ``expires``: a ping that waited
   longer than the command did is discarded, never run late.

A busy worker (``acks_late`` and prefetch 1: every pool slot holds one unacknowledged task)
gets no message, pings included, until a slot frees: the ping proves consumption only when a
slot is free. See :func:`asr_ingest.health_cmd.check` for how such a worker is judged.
"""

from __future__ import annotations

from celery import Task, shared_task

HEALTH_PING_TASK = "asr_ingest.health_ping"
"""Write one token to Redis; one argument, the token (str). Routed only to one worker."""

DIRECT_EXCHANGE = "C.dq2"
"""Celery's exchange of ``worker_direct`` queues (``celery.utils.nodenames``)."""

TOKEN_TTL_SECONDS = 300
"""How long an answered token stays in Redis (s): longer than any probe waits."""


def token_key(token: str) -> str:
    """Redis key of an answered ping; its value is the answering worker's node name."""
    return f"asr:health:{token}"


@shared_task(bind=True, name=HEALTH_PING_TASK, ignore_result=True, acks_late=False)  # type: ignore[untyped-decorator]  # Celery is untyped
def health_ping(self: Task, token: str) -> str:
    """Record ``token`` as answered by this worker; returns ``pong``."""
    self.app.redis.set(token_key(token), str(self.request.hostname), ex=TOKEN_TTL_SECONDS)
    return "pong"
