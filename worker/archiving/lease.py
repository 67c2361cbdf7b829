"""Per-task leases and delivery counts in Redis: one archiver per ``task_id`` at a time.

Keys (``asr:archive:`` prefix):

``asr:archive:lease:<task_id>`` (string)
    the holder ``<hostname>|<pid>|<process start>|<random token>`` (:class:`Holder`),
    ``SET NX PX``; renewed every third of its lifetime by a heartbeat thread while the holder
    lives, released by compare-and-delete. A holder killed with SIGKILL stops renewing. A
    redelivery on the same host finds its process gone (:func:`holder_dead`) and takes the
    lease over at once (compare-and-set); elsewhere the lease expires after
    ``ARCHIVE_LEASE_SECONDS`` (the heartbeat stopped) and the next try takes it.
``asr:archive:inflight`` (sorted set, member task_id, score last heartbeat in epoch seconds)
    tasks whose archiving started and has not finished; the sweep re-enqueues members whose
    heartbeat is older than ``ARCHIVE_STUCK_AFTER_SECONDS`` and whose lease is gone. A task
    waiting for a retry carries the retry's time as its score (:func:`touch_inflight`).
``asr:archive:deliveries:<task_id>`` (integer)
    runs of this task that started and did not finish (the process died): the poison-loop
    guard. Every run that ends, whatever its outcome, resets it.

Round trips: the service's run is three scripts, each atomic: :meth:`Lease.acquire_for` (load
the receipt, take the lease, enter the in-flight set), :func:`start_run` (count the delivery,
receipt ``archiving``) and :meth:`Lease.release_archived` (receipt ``archived``, count reset,
lease released, out of the in-flight set); the heartbeat's renewal is one script too.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import redis

from core.errors import Reason, TransientError
from core.store import OPEN_KEY, PENDING_KEY, Receipt, ReceiptStore

LEASE_KEY = "asr:archive:lease:{task_id}"
INFLIGHT_KEY = "asr:archive:inflight"
DELIVERIES_KEY = "asr:archive:deliveries:{task_id}"

# KEYS[1] lease, KEYS[2] in-flight set; ARGV token, ttl ms, now, task_id.
# 1 when the token still held it (then the heartbeat is recorded too).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  return 1
end
return 0
"""
# KEYS[1] lease, KEYS[2] in-flight set, KEYS[3] receipt hash (optional);
# ARGV token, ttl ms, now, task_id. {taken 0/1, holder ('' when taken or free), receipt fields}.
# With a receipt key and no stored body nothing is taken.
_ACQUIRE = """
local fields = {}
if KEYS[3] then
  if redis.call('HEXISTS', KEYS[3], 'body') == 0 then return {0, '', fields} end
  fields = redis.call('HGETALL', KEYS[3])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  return {1, '', fields}
end
return {0, redis.call('GET', KEYS[1]) or '', fields}
"""
# KEYS[1] deliveries, KEYS[2] receipt, KEYS[3] pending set, KEYS[4] open set;
# ARGV ttl s, max deliveries, now, task_id. The count; the receipt is set ``archiving``
# (as ReceiptStore.set_state does) only when the count is within the limit.
_START_RUN = """
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
if count <= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], 'state', 'archiving')
  redis.call('ZREM', KEYS[3], ARGV[4])
  redis.call('ZADD', KEYS[4], 'NX', ARGV[3], ARGV[4])
end
return count
"""
# KEYS[1] receipt, KEYS[2] pending, KEYS[3] open, KEYS[4] deliveries, KEYS[5] lease,
# KEYS[6] in-flight set; ARGV task_id, token. ReceiptStore.set_state(archived) +
# reset_deliveries + Lease.release(finished=True), at once.
_RELEASE_ARCHIVED = """
redis.call('HSET', KEYS[1], 'state', 'archived')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
if redis.call('GET', KEYS[5]) == ARGV[2] then redis.call('DEL', KEYS[5]) end
redis.call('ZREM', KEYS[6], ARGV[1])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] lease; ARGV dead holder, new holder, ttl ms. 1 when the dead holder was replaced.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3]))
  return 1
end
return 0
"""


def process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``); "" when unknown.

    With the pid it names one process across pid reuse (a restarted container's worker often
    gets the pid of the one that died).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return fields[19].decode() if len(fields) > 19 else ""


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease: ``host`` (hostname), ``pid``, ``start`` (:func:`process_start`)."""

    host: str
    pid: int
    start: str
    token: str

    @classmethod
    def me(cls) -> Holder:
        """This process, with a fresh token."""
        pid = os.getpid()
        return cls(socket.gethostname(), pid, process_start(pid), uuid.uuid4().hex)

    @classmethod
    def parse(cls, value: str) -> Holder | None:
        """The holder written as :meth:`encode`; None for another shape (an older token)."""
        parts = value.split("|")
        if len(parts) != 4 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2], parts[3])

    def encode(self) -> str:
        """``host|pid|start|token``."""
        return f"{self.host}|{self.pid}|{self.start}|{self.token}"


def holder_dead(holder: Holder) -> bool:
    """True when ``holder`` ran on this host and its process is gone (or is another one now).

    A holder on another host is never declared dead here: its lease expires by itself.
    """
    if holder.host != socket.gethostname():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return bool(holder.start) and process_start(holder.pid) != holder.start


class Lease:
    """The archiving lease of one task; use :meth:`acquire`, then ``with lease:``.

    Inside the ``with`` block a heartbeat renews the lease every ``ttl_s / 3`` seconds;
    :meth:`check` raises :class:`TransientError` (``lease_lost``) if a renewal failed.
    """

    def __init__(self, client: redis.Redis, task_id: str, ttl_s: float) -> None:
        self.task_id = task_id
        self.key = LEASE_KEY.format(task_id=task_id)
        self._redis = client
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._token = Holder.me().encode()
        self._stop = threading.Event()
        self._lost = False
        self._thread: threading.Thread | None = None
        self.released = False

    @staticmethod
    def held(client: redis.Redis, task_id: str) -> bool:
        """True while some worker holds the lease of ``task_id``."""
        return bool(client.exists(LEASE_KEY.format(task_id=task_id)))

    def acquire(self) -> bool:
        """Take the lease if nobody holds it, or its holder died on this host; True when taken."""
        taken, _ = self._acquire(None)
        return taken

    def acquire_for(self, store: ReceiptStore) -> tuple[Receipt | None, bool]:
        """Load the task's receipt from ``store`` and, when there is one, :meth:`acquire`;
        one round trip (unless the holder must be checked). ``(receipt or None, taken)``."""
        taken, fields = self._acquire(store.key(self.task_id))
        return ReceiptStore.decode(self.task_id, fields), taken

    def _acquire(self, receipt_key: str | None) -> tuple[bool, dict[bytes, bytes]]:
        keys = [self.key, INFLIGHT_KEY] + ([receipt_key] if receipt_key else [])
        args: list[str | int | float] = [self._token, self._ttl_ms, time.time(), self.task_id]
        answer = cast("list[Any]", self._redis.eval(_ACQUIRE, len(keys), *keys, *args))
        taken, holder, flat = answer
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        if receipt_key and not fields:
            return False, fields
        if not taken and not (holder and self._take_over(holder)):
            return False, fields
        return True, fields

    def _take_over(self, raw: bytes) -> bool:
        holder = Holder.parse(raw.decode())
        if holder is None or not holder_dead(holder):
            return False
        if not self._redis.eval(_TAKE_OVER, 1, self.key, raw, self._token, self._ttl_ms):
            return False
        self._redis.zadd(INFLIGHT_KEY, {self.task_id: time.time()})
        return True

    def remaining_seconds(self) -> float:
        """Seconds until the current holder's lease lapses unless renewed (0 when free)."""
        left: int = self._redis.pttl(self.key)
        return max(0.0, left / 1000)

    def renew(self) -> bool:
        """Extend the lease; False (and :meth:`check` fails from then on) when it was lost."""
        keys = [self.key, INFLIGHT_KEY]
        args: list[str | int | float] = [self._token, self._ttl_ms, time.time(), self.task_id]
        held = bool(self._redis.eval(_RENEW, 2, *keys, *args))
        if not held:
            self._lost = True
        return held

    def check(self) -> None:
        """Raise :class:`TransientError` (``lease_lost``) when another worker may hold it."""
        if self._lost:
            raise TransientError(f"lease of {self.task_id} lost", reason=Reason.LEASE_LOST)

    def release(self, *, finished: bool) -> None:
        """Give the lease up; ``finished`` also removes the task from the in-flight set."""
        self._redis.eval(_RELEASE, 1, self.key, self._token)
        if finished:
            self._redis.zrem(INFLIGHT_KEY, self.task_id)
        self.released = True

    def release_archived(self) -> None:
        """End the run archived in one script: the receipt ``archived`` (leaving the pending
        and open sets, as :meth:`ReceiptStore.set_state`), the delivery count reset, the lease
        released, the task out of the in-flight set. Redis errors propagate (nothing applied:
        the caller retries)."""
        receipt = ReceiptStore.key(self.task_id)
        deliveries = DELIVERIES_KEY.format(task_id=self.task_id)
        keys = [receipt, PENDING_KEY, OPEN_KEY, deliveries, self.key, INFLIGHT_KEY]
        self._redis.eval(_RELEASE_ARCHIVED, len(keys), *keys, self.task_id, self._token)
        self.released = True

    def __enter__(self) -> Lease:
        self._thread = threading.Thread(target=self._heartbeat, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._ttl_ms / 3000):
            try:
                if not self.renew():
                    return
            except redis.RedisError:
                continue


def count_delivery(client: redis.Redis, task_id: str, ttl_s: int) -> int:
    """Count one more delivery of ``task_id``; return the count so far (1 the first time)."""
    key = DELIVERIES_KEY.format(task_id=task_id)
    pipe = client.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, ttl_s)
    count, _ = pipe.execute()
    return int(count)


def start_run(client: redis.Redis, task_id: str, ttl_s: int, max_deliveries: int) -> int:
    """:func:`count_delivery` and, within ``max_deliveries``, the receipt ``archiving``
    (:meth:`ReceiptStore.set_state`), in one script; returns the count (1 the first time)."""
    keys = [DELIVERIES_KEY.format(task_id=task_id), ReceiptStore.key(task_id)]
    keys += [PENDING_KEY, OPEN_KEY]
    args: list[str | int | float] = [ttl_s, max_deliveries, time.time(), task_id]
    return int(cast("int", client.eval(_START_RUN, len(keys), *keys, *args)))


def reset_deliveries(client: redis.Redis, task_id: str) -> None:
    """Forget the delivery count of ``task_id`` (after success, or before a replay)."""
    client.delete(DELIVERIES_KEY.format(task_id=task_id))


def stuck_tasks(client: redis.Redis, older_than_s: float, *, now: float | None = None) -> list[str]:
    """In-flight task ids without a live lease whose last heartbeat is older than this."""
    cutoff = (time.time() if now is None else now) - older_than_s
    members = [m.decode() for m in client.zrangebyscore(INFLIGHT_KEY, "-inf", cutoff)]  # type: ignore[union-attr]  # sync client returns a list
    return [tid for tid in members if not client.exists(LEASE_KEY.format(task_id=tid))]


def touch_inflight(client: redis.Redis, task_id: str, *, now: float | None = None) -> None:
    """Set the heartbeat of ``task_id`` to ``now`` (after re-enqueueing it, so it waits its
    turn; or to the time of its scheduled retry, so the sweep leaves it alone until then)."""
    client.zadd(INFLIGHT_KEY, {task_id: time.time() if now is None else now})
