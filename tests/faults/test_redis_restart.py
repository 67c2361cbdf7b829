"""Redis (the broker and the receipts, with AOF) SIGKILLed and restarted while a task runs."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tests.faults.support import Clock, deliver, producer, report, state, worker_env
from tests.fixtures.faults import KillableRedis
from tests.fixtures.worker import WorkerFactory, broker_url_for, wait_until
from tests.support import task_events as te
from tests.support.result_server import ResultServer

BODY = te.result_file(words=2000)  # about 150 KB: ten 16 KiB chunks


def test_worker_survives_a_redis_restart_mid_task(
    celery_worker_factory: WorkerFactory, killable_redis: KillableRedis,
    result_server: ResultServer, tmp_path: Path,
) -> None:  # fmt: skip
    """kill -9 Redis while a download runs, restart it 2 s later on the same socket: the worker
    stays up and consuming; the running task and one sent afterwards are archived."""
    archive = tmp_path / "archive"
    env = worker_env(result_server, [archive.as_uri()], tmp_path / "spool")
    env.update(REDIS_URL=killable_redis.url, CELERY_BROKER_URL=broker_url_for(killable_redis.url))
    client = redis.Redis.from_url(killable_redis.url)
    worker = celery_worker_factory(env, pool="prefork", concurrency=2)
    slow = result_server.add("/r/slow.json", BODY, chunk_delay_s=0.6)
    deliver(client, producer(killable_redis.url), "t-redis-1", [slow])
    wait_until(lambda: result_server.hits("/r/slow.json") == 1, what="download started")
    time.sleep(1.5)  # the receipt and the unacked entry are older than AOF's 1 s fsync
    killable_redis.kill()
    time.sleep(2.0)
    killable_redis.start()
    clock = Clock()
    wait_until(lambda: state(client, "t-redis-1") == "archived", 60, "running task archived")
    report("redis restart: running task archived after restart", clock())
    assert worker.process.poll() is None, worker.log()[-3000:]
    fresh = result_server.add("/r/fresh.json", te.result_file(words=10))
    deliver(client, producer(killable_redis.url), "t-redis-2", [fresh])
    wait_until(lambda: state(client, "t-redis-2") == "archived", 60, "new task archived")
    report("redis restart: new task archived after restart", clock())
    assert worker.process.poll() is None
    assert (archive / "t-redis-1" / "manifest.json").exists()
    # the late acknowledgement on the pre-restart channel reached the restarted server
    wait_until(lambda: client.hlen("unacked") == 0 and client.llen("archive") == 0, 20, "acked")
    assert worker.log().count('"task_id": "t-redis-1"') >= 1
    assert "Unrecoverable error" not in worker.log()
