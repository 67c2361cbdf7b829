"""Per-task leases and delivery counts in Redis: one archiver per ``task_id`` at a time.

Keys (``asr:archive:`` prefix):

``asr:archive:lease:<task_id>`` (string)
    a random token, ``SET NX PX``; renewed every third of its lifetime by a heartbeat thread
    while the holder lives, released by compare-and-delete. A holder killed with SIGKILL
    stops renewing; the lease expires after ``ARCHIVE_LEASE_SECONDS`` and the redelivered
    message (or the sweep) takes over and resumes.
``asr:archive:inflight`` (sorted set, member task_id, score last heartbeat in epoch seconds)
    tasks whose archiving started and has not finished; the sweep re-enqueues members whose
    heartbeat is older than ``ARCHIVE_STUCK_AFTER_SECONDS`` and whose lease is gone.
``asr:archive:deliveries:<task_id>`` (integer)
    how many times a worker took the lease for this task: the poison-loop guard.
"""

from __future__ import annotations

import threading
import time
import uuid
from types import TracebackType

import redis

from core.errors import Reason, TransientError

LEASE_KEY = "asr:archive:lease:{task_id}"
INFLIGHT_KEY = "asr:archive:inflight"
DELIVERIES_KEY = "asr:archive:deliveries:{task_id}"

# KEYS[1] lease; ARGV token, ttl ms. 1 when the token still held it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._lost = False
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when taken."""
        if not self._redis.set(self.key, self._token, nx=True, px=self._ttl_ms):
            return False
        self._redis.zadd(INFLIGHT_KEY, {self.task_id: time.time()})
        return True

    def renew(self) -> bool:
        """Extend the lease; False (and :meth:`check` fails from then on) when it was lost."""
        held = bool(self._redis.eval(_RENEW, 1, self.key, self._token, self._ttl_ms))
        if held:
            self._redis.zadd(INFLIGHT_KEY, {self.task_id: time.time()})
        else:
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


def reset_deliveries(client: redis.Redis, task_id: str) -> None:
    """Forget the delivery count of ``task_id`` (after success, or before a replay)."""
    client.delete(DELIVERIES_KEY.format(task_id=task_id))


def stuck_tasks(client: redis.Redis, older_than_s: float, *, now: float | None = None) -> list[str]:
    """In-flight task ids without a live lease whose last heartbeat is older than this."""
    cutoff = (time.time() if now is None else now) - older_than_s
    members = [m.decode() for m in client.zrangebyscore(INFLIGHT_KEY, "-inf", cutoff)]  # type: ignore[union-attr]  # sync client returns a list
    return [tid for tid in members if not client.exists(LEASE_KEY.format(task_id=tid))]


def touch_inflight(client: redis.Redis, task_id: str, *, now: float | None = None) -> None:
    """Reset the heartbeat of ``task_id`` (after re-enqueueing it, so it waits its turn)."""
    client.zadd(INFLIGHT_KEY, {task_id: time.time() if now is None else now})
