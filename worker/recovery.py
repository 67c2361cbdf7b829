"""Give the unacknowledged messages of a dead worker back to their queues within seconds.

kombu's Redis transport keeps each delivered, unacknowledged message in the ``unacked`` hash
(delivery tag → message) and its delivery time in ``unacked_index``, and puts a message back
only when it is older than the visibility timeout (1 h by default), whoever holds it: a worker
killed whole (SIGKILL, OOM, a lost host) strands its messages for that long. Nothing there says
which worker holds a message, so the worker records it (keys in ``REDIS_URL``'s Redis):

``asr:workers`` (hash)
    incarnation id → ``host|pid|process start`` of each running worker process (the main one)
``asr:worker:alive:<id>`` (string, expires after 3 x ``WORKER_HEARTBEAT_SECONDS``)
    renewed every ``WORKER_HEARTBEAT_SECONDS`` while the worker lives
``asr:worker:tags:<id>`` (set)
    the delivery tags the incarnation received (Celery's ``task_received``, before the task
    runs or waits for its countdown); acknowledged ones drop out of ``unacked`` by themselves

An incarnation is dead when its alive key is gone, or when it ran on this host and its process
is gone (:func:`worker.archiving.lease.holder_dead`): a worker restarted on the same host sees
that at once. Every worker, when it is ready and then every period, restores the tags of dead
incarnations that are still in ``unacked`` with kombu's own ``QoS.restore_by_tag`` (a
transaction: two workers never restore one message twice) and forgets the incarnation. So a
killed worker's messages are back on their queue at most ``3 x WORKER_HEARTBEAT_SECONDS`` plus
one period after the kill, or as soon as a worker starts on the same host.

Only for a Redis broker (AMQP brokers redeliver when the connection closes). A message that
the dead worker took off its queue but had not yet announced is still left to the visibility
timeout (a window of microseconds per message).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from typing import Any, cast

import redis
import structlog

from worker import metrics
from worker.archiving.lease import Holder, holder_dead, process_start

log = structlog.get_logger(__name__)

WORKERS_KEY = "asr:workers"
ALIVE_KEY = "asr:worker:alive:{id}"
TAGS_KEY = "asr:worker:tags:{id}"
UNACKED_KEY = "unacked"  # kombu's Redis transport, Channel.unacked_key


class Incarnation:
    """This worker process's record: announce, receive tags, find and restore the dead."""

    def __init__(self, client: redis.Redis, period_s: float) -> None:
        pid = os.getpid()
        self.holder = Holder(socket.gethostname(), pid, process_start(pid), uuid.uuid4().hex)
        self.id = f"{self.holder.host}:{pid}:{self.holder.token[:8]}"
        self.period_s = period_s
        self._redis = client
        self._stop = threading.Event()

    def announce(self) -> None:
        """Register (or renew) this incarnation as alive for three periods."""
        pipe = self._redis.pipeline(transaction=True)  # never listed without its alive key
        pipe.hset(WORKERS_KEY, self.id, self.holder.encode())
        pipe.set(ALIVE_KEY.format(id=self.id), "1", px=int(self.period_s * 3000))
        pipe.execute()

    def received(self, delivery_tag: str) -> None:
        """Record that this incarnation holds the message ``delivery_tag``."""
        key = TAGS_KEY.format(id=self.id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.sadd(key, delivery_tag)
        pipe.expire(key, 7 * 86_400)
        pipe.execute()

    def retire(self) -> None:
        """Forget this incarnation (warm shutdown: kombu restores its own messages)."""
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self._forget(self.id)

    def dead_incarnations(self) -> list[str]:
        """Ids of other incarnations that are dead (see the module docstring)."""
        known = cast("dict[bytes, bytes]", self._redis.hgetall(WORKERS_KEY))
        dead = []
        for raw_id, raw_holder in known.items():
            other = raw_id.decode()
            if other == self.id:
                continue
            holder = Holder.parse(raw_holder.decode())
            gone = not self._redis.exists(ALIVE_KEY.format(id=other))
            if gone or (holder is not None and holder_dead(holder)):
                dead.append(other)
        return dead

    def restore_dead(self, restore: Any) -> int:
        """Restore every dead incarnation's unacknowledged messages; how many were restored.

        ``restore(tag)`` puts one message back (kombu's ``QoS.restore_by_tag``).
        """
        count = 0
        for other in self.dead_incarnations():
            tags = cast("set[bytes]", self._redis.smembers(TAGS_KEY.format(id=other)))
            for tag in sorted(t.decode() for t in tags):
                if self._redis.hexists(UNACKED_KEY, tag):
                    restore(tag)
                    count += 1
            self._forget(other)
            log.info("dead_worker_restored", incarnation=other, messages=count)
        if count:
            metrics.messages_restored(count)
        return count

    def _forget(self, other: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(WORKERS_KEY, other)
        pipe.delete(ALIVE_KEY.format(id=other), TAGS_KEY.format(id=other))
        pipe.execute()

    def run(self, restore: Any) -> None:
        """Announce and restore every period until :meth:`retire` (a daemon thread's body)."""
        while True:
            try:
                self.announce()
                self.restore_dead(restore)
            except redis.RedisError as exc:  # Redis restarting: try again next period
                log.warning("worker_recovery_failed", error=repr(exc))
            if self._stop.wait(self.period_s):
                return


def broker_restorer(app: Any) -> Any:
    """``restore(tag)`` through a broker connection of ``app`` of its own (kombu's Redis QoS).

    The message goes back to the end of its queue that is consumed next (``RPUSH``).
    """
    connection = app.connection_for_write()

    def restore(tag: str) -> None:
        channel = connection.default_channel
        with channel.conn_or_acquire() as client:
            channel.qos.restore_by_tag(tag, client=client, leftmost=False)

    return restore
