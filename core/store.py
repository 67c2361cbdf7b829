"""Durable receipts of completion events in Redis: the seam between webhook and worker.

A *receipt* is one task's stored event. Keys (``asr:`` prefix, all expire after
``DEDUPE_TTL_SECONDS``):

``asr:receipt:<task_id>`` (hash)
    ``body``         the raw event bytes exactly as delivered (or synthesised by reconciliation)
    ``received_at``  receipt time, seconds since the epoch (float, as text)
    ``event_id``     the CloudEvents ``id`` ("" when unknown)
    ``model``        the model named by ``data.user_api_unique_key`` ("" when unknown)
    ``source``       ``eventbridge`` or ``reconciliation`` (the contract's manifest ``source``;
                     receipts stored before the rename say ``reconciled`` and load as
                     ``reconciliation``)
    ``state``        see below

``asr:receipts:pending`` (sorted set, member task_id, score received_at)
    receipts claimed but not yet known to be on the ``archive`` queue.
``asr:receipts:open`` (sorted set, member task_id, score received_at)
    receipts not archived and not dead-lettered: what the ``asr_unarchived_tasks`` gauges
    count by age (:mod:`core.gauges`). Added by the claims, removed on ``archived``/``dead``.

Receipt states::

    claim ──▶ received ──enqueue ok──▶ enqueued ──worker starts──▶ archiving ──▶ archived
                 │                        ▲                             └──────▶ dead
                 │     claim_enqueued ────┘ (stored and queued in one step)   (dead-lettered)
                 └── crash or broker failure after the claim: stays ``received`` in the
                     pending set; the worker's periodic sweep re-enqueues receipts older than
                     ``RECEIPT_SWEEP_AFTER_SECONDS``.

Two ways in, both one Lua script each, so concurrent deliveries of one ``task_id`` produce
exactly one claim:

- :meth:`ReceiptStore.claim_enqueued` (broker = this Redis server and database): the existence
  check, hash write, expiry and the ``LPUSH`` of the archive message onto the queue list happen
  atomically, so the receipt starts as ``enqueued`` and never enters the pending set: there is
  no moment at which it is stored but its message is not.
- :meth:`ReceiptStore.claim` then, after the publish, :meth:`ReceiptStore.mark_enqueued` (any
  other broker). ``mark_enqueued`` only moves ``received`` to ``enqueued``: a worker may take the
  message and set ``archiving`` (or finish) before the webhook marks it, and a receipt never
  goes backwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, cast

import redis

RECEIPT_KEY = "asr:receipt:{task_id}"
PENDING_KEY = "asr:receipts:pending"
OPEN_KEY = "asr:receipts:open"
FINAL_STATES = frozenset({"archived", "dead"})

ReceiptState = Literal["received", "enqueued", "archiving", "archived", "dead"]
ReceiptSource = Literal["eventbridge", "reconciliation"]
_LEGACY_SOURCES = {"reconciled": "reconciliation"}

# KEYS[1] receipt hash, KEYS[2] pending set, KEYS[3] open set;
# ARGV: body, received_at, event_id, model, source, ttl seconds, task_id.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'body', ARGV[1], 'received_at', ARGV[2], 'event_id', ARGV[3],
           'model', ARGV[4], 'source', ARGV[5], 'state', 'received')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[7])
return 1
"""

# KEYS[1] receipt hash, KEYS[2] queue list, KEYS[3] open set;
# ARGV: body, received_at, event_id, model, source, ttl seconds, message, task_id.
_CLAIM_ENQUEUED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'body', ARGV[1], 'received_at', ARGV[2], 'event_id', ARGV[3],
           'model', ARGV[4], 'source', ARGV[5], 'state', 'enqueued')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
redis.call('LPUSH', KEYS[2], ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[8])
return 1
"""

# KEYS[1] receipt hash, KEYS[2] pending set; ARGV: task_id.
_MARK_ENQUEUED = """
local moved = 0
if redis.call('HGET', KEYS[1], 'state') == 'received' then
  redis.call('HSET', KEYS[1], 'state', 'enqueued')
  moved = 1
end
redis.call('ZREM', KEYS[2], ARGV[1])
return moved
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
        self._claim_enqueued = client.register_script(_CLAIM_ENQUEUED)
        self._mark_enqueued = client.register_script(_MARK_ENQUEUED)

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
        """Store ``body`` for ``task_id`` unless already stored; True when this call stored it.

        The receipt starts ``received`` and pending; ``now`` is seconds since the epoch.
        """
        args = self._fields(body, event_id, model, source, now)
        keys = [self.key(task_id), PENDING_KEY, OPEN_KEY]
        return bool(self._claim(keys=keys, args=[*args, task_id]))

    def claim_enqueued(
        self,
        task_id: str,
        body: bytes,
        *,
        queue_key: str,
        message: bytes | str,
        event_id: str = "",
        model: str = "",
        source: ReceiptSource = "eventbridge",
        now: float | None = None,
    ) -> bool:
        """Store ``body`` and ``LPUSH`` ``message`` onto list ``queue_key``, atomically, once.

        ``message`` is the broker's stored form of the archive message (for Celery on kombu's
        Redis transport, the JSON document ``Channel._put`` would push onto list ``archive``).
        True when this call stored it (state ``enqueued``, never pending); False for a repeat,
        which pushes nothing. Only right when the broker's queue lives in this same Redis
        database; the webhook decides that.
        """
        args = [*self._fields(body, event_id, model, source, now), message, task_id]
        keys = [self.key(task_id), queue_key, OPEN_KEY]
        return bool(self._claim_enqueued(keys=keys, args=args))

    def _fields(
        self, body: bytes, event_id: str, model: str, source: str, now: float | None
    ) -> list[bytes | str | int]:
        received_at = time.time() if now is None else now
        return [body, repr(received_at), event_id, model, source, self._ttl]

    def release(self, task_id: str) -> None:
        """Undo a claim whose enqueue failed, so the sender's retry is accepted afresh."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self.key(task_id))
        pipe.zrem(PENDING_KEY, task_id)
        pipe.zrem(OPEN_KEY, task_id)
        pipe.execute()

    def mark_enqueued(self, task_id: str) -> bool:
        """Record that the archive message is on the broker: ``received`` → ``enqueued``.

        Leaves the pending set in any case. Any other state (``archiving``, ``archived``,
        ``dead``: a worker got there first) and a missing receipt are left as they are.
        True when the state moved.
        """
        keys = [self.key(task_id), PENDING_KEY]
        return bool(self._mark_enqueued(keys=keys, args=[task_id]))

    def set_state(self, task_id: str, state: ReceiptState) -> None:
        """Advance a receipt's state (the worker: ``archiving``, ``archived``, ``dead``).

        A final state leaves the open set; any other (a replay sets ``enqueued``) enters it
        unless it is there already.
        """
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self.key(task_id), "state", state)
        pipe.zrem(PENDING_KEY, task_id)
        if state in FINAL_STATES:
            pipe.zrem(OPEN_KEY, task_id)
        else:
            pipe.zadd(OPEN_KEY, {task_id: time.time()}, nx=True)
        pipe.execute()

    def load(self, task_id: str) -> Receipt | None:
        """The stored receipt of ``task_id``, or None when none is stored (or it expired)."""
        raw = cast("dict[bytes, bytes]", self._redis.hgetall(self.key(task_id)))
        return self.decode(task_id, raw)

    @staticmethod
    def decode(task_id: str, raw: dict[bytes, bytes]) -> Receipt | None:
        """The receipt in ``raw`` (a receipt hash's fields as ``HGETALL`` returns them), or
        None when it holds no body."""
        if not raw or b"body" not in raw:
            return None
        text = {k.decode(): v.decode() for k, v in raw.items() if k != b"body"}
        return Receipt(
            task_id=task_id,
            body=raw[b"body"],
            received_at=float(text.get("received_at", "0")),
            event_id=text.get("event_id", ""),
            model=text.get("model", ""),
            source=_LEGACY_SOURCES.get(text.get("source", ""), text.get("source", "eventbridge")),
            state=text.get("state", "received"),
        )

    def stale_open(
        self, older_than_seconds: float, *, now: float | None = None, limit: int = 500
    ) -> list[str]:
        """Up to ``limit`` task ids neither archived nor dead whose receipt (or last
        :meth:`touch_open`) is older than ``older_than_seconds``, oldest first."""
        cutoff = (time.time() if now is None else now) - older_than_seconds
        members = self._redis.zrangebyscore(OPEN_KEY, "-inf", cutoff, start=0, num=limit)
        return [m.decode() for m in cast("list[bytes]", members)]

    def touch_open(self, task_id: str, *, now: float | None = None) -> None:
        """Restart the wait of an open receipt (after the sweep re-enqueued it)."""
        self._redis.zadd(OPEN_KEY, {task_id: time.time() if now is None else now}, xx=True)

    def stale_pending(self, older_than_seconds: float, *, now: float | None = None) -> list[str]:
        """Task ids claimed more than ``older_than_seconds`` ago and never marked enqueued."""
        cutoff = (time.time() if now is None else now) - older_than_seconds
        members = cast("list[bytes]", self._redis.zrangebyscore(PENDING_KEY, "-inf", cutoff))
        return [m.decode() for m in members]
