"""Dead letters in Redis: archive tasks that failed for good, kept for ``asr-ingest dlq``.

Keys: ``asr:dlq`` (hash, field task_id, value the record as JSON) and ``asr:dlq:index``
(sorted set, member task_id, score the time of the last failure). Records do not expire: an
operator lists and replays them (`docs/contract.md`, "Command line").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import cast

import redis

from core.gauges import DEAD_LETTER_KEYS
from core.logs import redact_urls
from core.store import ReceiptStore
from worker import metrics
from worker.archiving.lease import reset_deliveries

DLQ_KEY = "asr:dlq"
DLQ_INDEX_KEY = "asr:dlq:index"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One failed task: ``reason`` (an error reason), ``attempts`` made, ``last_error``
    (a message without signed query strings), ``failed_at`` in seconds since the epoch."""

    task_id: str
    reason: str
    attempts: int
    last_error: str
    failed_at: float


class DeadLetters:
    """Add, list, read and remove dead letters. Redis errors propagate.

    Each letter written counts ``asr_dead_letters_written_total{kind, reason}``; ``kind`` is
    the key's name in :data:`core.gauges.DEAD_LETTER_KEYS` (``archive``, ``notify``).

    ``key`` names the list (default the archive's, ``asr:dlq``; its index is ``<key>:index``):
    notifications keep theirs apart under ``asr:notify:dlq``.
    """

    def __init__(self, client: redis.Redis, *, key: str = DLQ_KEY) -> None:
        self._redis = client
        self._key, self._index = key, f"{key}:index"
        self._kind = {v: k for k, v in DEAD_LETTER_KEYS.items()}.get(key, "other")

    def add(
        self, task_id: str, reason: str, attempts: int, last_error: str, *, now: float | None = None
    ) -> DeadLetter:
        """Record (or replace) the dead letter of ``task_id``; returns it."""
        letter = DeadLetter(
            task_id=task_id,
            reason=reason,
            attempts=attempts,
            last_error=redact_urls(last_error)[:2000],
            failed_at=time.time() if now is None else now,
        )
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._key, task_id, json.dumps(asdict(letter)))
        pipe.zadd(self._index, {task_id: letter.failed_at})
        pipe.execute()
        metrics.dead_letter_written(self._kind, reason)
        return letter

    def get(self, task_id: str) -> DeadLetter | None:
        """The dead letter of ``task_id``, or None."""
        raw = cast("bytes | None", self._redis.hget(self._key, task_id))
        return DeadLetter(**json.loads(raw)) if raw else None

    def list(self) -> list[DeadLetter]:
        """Every dead letter, oldest failure first."""
        ids = cast("list[bytes]", self._redis.zrange(self._index, 0, -1))
        if not ids:
            return []
        raws = cast("list[bytes | None]", self._redis.hmget(self._key, ids))
        return [DeadLetter(**json.loads(raw)) for raw in raws if raw]

    def remove(self, task_id: str) -> bool:
        """Delete the dead letter of ``task_id``; True when there was one."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self._key, task_id)
        pipe.zrem(self._index, task_id)
        removed, _ = pipe.execute()
        return bool(removed)


def replay(
    client: redis.Redis,
    task_ids: list[str] | None,
    send: Callable[[str], None],
    receipt_ttl_s: int,
) -> tuple[list[str], list[str]]:
    """Re-enqueue dead letters (all when ``task_ids`` is None) for a fresh archive run.

    For each: the delivery count is reset, the receipt goes back to ``enqueued``, ``send``
    publishes the archive message (with ``replay=True``: an existing manifest is rewritten) and
    the dead letter is removed. Returns ``(replayed, missing)``; an id without a dead letter or
    whose stored event has expired is listed as missing and left as it is.
    """
    letters = DeadLetters(client)
    wanted = task_ids if task_ids is not None else [d.task_id for d in letters.list()]
    store = ReceiptStore(client, receipt_ttl_s)
    replayed: list[str] = []
    missing: list[str] = []
    for task_id in wanted:
        if letters.get(task_id) is None or store.load(task_id) is None:
            missing.append(task_id)
            continue
        reset_deliveries(client, task_id)
        store.set_state(task_id, "enqueued")
        send(task_id)
        letters.remove(task_id)
        replayed.append(task_id)
    return replayed, missing
