"""Processes killed mid-download: a pool process, then the whole worker (default settings)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import redis

from tests.faults.support import Clock, deliver, manifest, producer, report, state, worker_env
from tests.fixtures.worker import WorkerFactory, wait_until
from tests.support import task_events as te
from tests.support.result_server import Fault, ResultServer
from worker.archiving.dlq import DeadLetters
from worker.archiving.lease import Holder

BODY = te.result_file(words=2000)  # about 150 KB: ten 16 KiB chunks
RECOVERY_BOUND_S = 60.0


def _holder(client: redis.Redis, task_id: str) -> Holder | None:
    raw = client.get(f"asr:archive:lease:{task_id}")
    return Holder.parse(raw.decode()) if isinstance(raw, bytes) else None


def _slow_first_download(result_server: ResultServer, path: str) -> str:
    """A result whose first download takes about 5 s; later ones are fast."""
    return result_server.add(path, BODY, faults=[Fault(delay_s=0.5)])


def test_pool_process_killed_mid_download(
    celery_worker_factory: WorkerFactory, redis_url: str, redis_client: redis.Redis,
    result_server: ResultServer, tmp_path: Path,
) -> None:  # fmt: skip
    """SIGKILL the prefork child downloading a result: the requeued message takes the dead
    child's lease over at once and the task is archived within 60 s."""
    archive = tmp_path / "archive"
    env = worker_env(result_server, [archive.as_uri()], tmp_path / "spool")
    celery_worker_factory(env, pool="prefork", concurrency=2)
    url = _slow_first_download(result_server, "/r/pool.json")
    deliver(redis_client, producer(redis_url), "t-pool", [url])
    holder = wait_until(lambda: _holder(redis_client, "t-pool"), what="lease taken")
    assert isinstance(holder, Holder)
    wait_until(lambda: result_server.hits("/r/pool.json") == 1, what="download started")
    os.kill(holder.pid, signal.SIGKILL)
    clock = Clock()
    wait_until(lambda: state(redis_client, "t-pool") == "archived", RECOVERY_BOUND_S, "archived")
    report("pool process SIGKILL: kill to archived", clock())
    found = manifest(archive, "t-pool")
    assert found is not None and found["archive_status"] == "complete"
    assert DeadLetters(redis_client).list() == []


def test_whole_worker_killed_mid_download_and_restarted(
    celery_worker_factory: WorkerFactory, redis_url: str, redis_client: redis.Redis,
    result_server: ResultServer, tmp_path: Path,
) -> None:  # fmt: skip
    """SIGKILL the worker and its pool mid-download, start a new one: it finds the dead
    worker's unacknowledged message and its dead lease and archives within 60 s."""
    archive = tmp_path / "archive"
    env = worker_env(result_server, [archive.as_uri()], tmp_path / "spool")
    first = celery_worker_factory(env, pool="prefork", concurrency=2)
    url = _slow_first_download(result_server, "/r/whole.json")
    deliver(redis_client, producer(redis_url), "t-whole", [url])
    wait_until(lambda: result_server.hits("/r/whole.json") == 1, what="download started")
    wait_until(lambda: _holder(redis_client, "t-whole"), what="lease taken")
    first.kill()
    assert redis_client.hlen("unacked") == 1  # neither lost nor acknowledged
    clock = Clock()
    celery_worker_factory(env, pool="prefork", concurrency=2)
    report("whole worker SIGKILL: restart to ready", clock())
    wait_until(lambda: state(redis_client, "t-whole") == "archived", RECOVERY_BOUND_S, "archived")
    report("whole worker SIGKILL: restart to archived", clock())
    found = manifest(archive, "t-whole")
    assert found is not None and found["archive_status"] == "complete"
    wait_until(lambda: redis_client.hlen("unacked") == 0, 20, "acknowledged")
