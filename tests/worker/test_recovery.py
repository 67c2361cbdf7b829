"""Dead workers' unacknowledged messages: who holds what, who is dead, restoring."""

from __future__ import annotations

import socket

import redis

from worker.archiving.lease import Holder
from worker.recovery import ALIVE_KEY, TAGS_KEY, UNACKED_KEY, WORKERS_KEY, Incarnation


def test_restores_only_dead_incarnations_unacked_messages(redis_client: redis.Redis) -> None:
    """A dead incarnation's tags still in ``unacked`` are restored once and it is forgotten;
    a live one's and acknowledged tags are left alone."""
    me = Incarnation(redis_client, 5.0)
    alive = Incarnation(redis_client, 5.0)
    alive.announce()
    alive.received("tag-alive")
    dead_holder = Holder(socket.gethostname(), 2**22 + 11, "1", "x")  # no such pid here
    redis_client.hset(WORKERS_KEY, "dead", dead_holder.encode())
    redis_client.set(ALIVE_KEY.format(id="dead"), "1")  # alive key not yet lapsed
    redis_client.sadd(TAGS_KEY.format(id="dead"), "tag-1", "tag-acked")
    redis_client.hset(UNACKED_KEY, mapping={"tag-1": "m", "tag-alive": "m"})
    restored: list[str] = []
    assert me.restore_dead(restored.append) == 1
    assert restored == ["tag-1"]
    assert not redis_client.hexists(WORKERS_KEY, "dead")
    assert me.restore_dead(restored.append) == 0
    assert alive.id not in me.dead_incarnations()  # this very process: alive


def test_lapsed_heartbeat_is_dead_elsewhere(redis_client: redis.Redis) -> None:
    """An incarnation on another host is dead once its alive key lapsed."""
    me = Incarnation(redis_client, 5.0)
    redis_client.hset(WORKERS_KEY, "remote", Holder("elsewhere", 1, "1", "x").encode())
    redis_client.set(ALIVE_KEY.format(id="remote"), "1")
    assert me.dead_incarnations() == []
    redis_client.delete(ALIVE_KEY.format(id="remote"))
    assert me.dead_incarnations() == ["remote"]
