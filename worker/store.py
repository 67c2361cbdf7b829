"""Durable receipts of completion events in Redis: the seam between webhook and worker.

A *receipt* is one task's stored event. Keys (``asr:`` prefix, all expire after
``DEDUPE_TTL_SECONDS``):

``asr:receipt:<task_id>`` (hash)
    ``body``         the raw event bytes exactly as delivered (or synthesised by reconciliation)
    ``received_at``  receipt time, seconds since the epoch (float, as text)
    ``event_id``     the CloudEvents ``id`` ("" when unknown)
    ``model``        the model named by ``data.user_api_unique_key`` ("" when unknown)
    ``source``       ``eventbridge`` or ``reconciled``
    ``state``        see below

``asr:receipts:pending`` (sorted set, member task_id, score received_at)
    receipts claimed but not yet known to be on the ``archive`` queue.

Receipt states::

    received ──enqueue ok──▶ enqueued ──worker starts──▶ archiving ──▶ archived
        │                                                    └──────▶ dead  (dead-lettered)
        └── crash or broker failure after the claim: stays ``received`` in the pending set;
            the worker's periodic sweep re-enqueues receipts older than
            ``RECEIPT_SWEEP_AFTER_SECONDS``.

The claim (existence check, hash write, expiry, pending entry) is one Lua script: one round
trip, atomic, so concurrent deliveries of one ``task_id`` produce exactly one claim.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, cast

import redis

RECEIPT_KEY = "asr:receipt:{task_id}"
PENDING_KEY = "asr:receipts:pending"

ReceiptState = Literal["received", "enqueued", "archiving", "archived", "dead"]
ReceiptSource = Literal["eventbridge", "reconciled"]

# KEYS[1] receipt hash, KEYS[2] pending set;
# ARGV: body, received_at, event_id, model, source, ttl seconds, task_id.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'body', ARGV[1], 'received_at', ARGV[2], 'event_id', ARGV[3],
           'model', ARGV[4], 'source', ARGV[5], 'state', 'received')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[7])
return 1
"""


@dataclass(frozen=True, slots=True)
class Receipt:
    """A stored event: raw ``body`` bytes, ``received_at`` in seconds since the epoch."""

    task_id: str
    body: bytes
    received_at: float
    event_id: str
    model: str
    source: str
    state: str


class ReceiptStore:
    """Claim, read and advance receipts. Redis errors propagate as :class:`redis.RedisError`."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._claim = client.register_script(_CLAIM)

    @staticmethod
    def key(task_id: str) -> str:
        """Redis key of one receipt hash."""
        return RECEIPT_KEY.format(task_id=task_id)

    def claim(
        self,
        task_id: str,
        body: bytes,
        *,
        event_id: str = "",
        model: str = "",
        source: ReceiptSource = "eventbridge",
        now: float | None = None,
    ) -> bool:
        """Store ``body`` for ``task_id`` unless already stored; True when this call stored it."""
        received_at = time.time() if now is None else now
        args: list[bytes | str | int] = [
            body,
            repr(received_at),
            event_id,
            model,
            source,
            self._ttl,
            task_id,
        ]
        return bool(self._claim(keys=[self.key(task_id), PENDING_KEY], args=args))

    def release(self, task_id: str) -> None:
        """Undo a claim whose enqueue failed, so the sender's retry is accepted afresh."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self.key(task_id))
        pipe.zrem(PENDING_KEY, task_id)
        pipe.execute()

    def mark_enqueued(self, task_id: str) -> None:
        """Record that the archive message is on the broker (leaves the pending set)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self.key(task_id), "state", "enqueued")
        pipe.zrem(PENDING_KEY, task_id)
        pipe.execute()

    def set_state(self, task_id: str, state: ReceiptState) -> None:
        """Advance a receipt's state (the worker: ``archiving``, ``archived``, ``dead``)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self.key(task_id), "state", state)
        pipe.zrem(PENDING_KEY, task_id)
        pipe.execute()

    def load(self, task_id: str) -> Receipt | None:
        """The stored receipt of ``task_id``, or None when none is stored (or it expired)."""
        raw = cast("dict[bytes, bytes]", self._redis.hgetall(self.key(task_id)))
        if not raw or b"body" not in raw:
            return None
        text = {k.decode(): v.decode() for k, v in raw.items() if k != b"body"}
        return Receipt(
            task_id=task_id,
            body=raw[b"body"],
            received_at=float(text.get("received_at", "0")),
            event_id=text.get("event_id", ""),
            model=text.get("model", ""),
            source=text.get("source", "eventbridge"),
            state=text.get("state", "received"),
        )

    def stale_pending(self, older_than_seconds: float, *, now: float | None = None) -> list[str]:
        """Task ids claimed more than ``older_than_seconds`` ago and never marked enqueued."""
        cutoff = (time.time() if now is None else now) - older_than_seconds
        members = cast("list[bytes]", self._redis.zrangebyscore(PENDING_KEY, "-inf", cutoff))
        return [m.decode() for m in members]
