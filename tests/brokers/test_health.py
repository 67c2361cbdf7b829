"""``asr-ingest health``: a ping that must round-trip through the broker to one real worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from asr_ingest.embedded import EmbeddedRedis
from asr_ingest.health_cmd import check
from asr_ingest.starters import script
from core.queues import ARCHIVE_QUEUE, ARCHIVE_TASK
from core.settings import Settings, broker_url_for, load_settings
from core.store import ReceiptStore
from tests.fixtures.worker import WorkerFactory, WorkerProcess, wait_until
from tests.support import task_events as te
from tests.support.result_server import ResultServer
from worker import create_celery

pytestmark = pytest.mark.e2e

TIMEOUT_S = 3.0
BOUND_S = TIMEOUT_S + 2 * 1.0 + 1.0  # the ping's wait, two inspect calls, publishing


def node(worker: WorkerProcess) -> str:
    """The worker's Celery node name (``%h`` expanded as Celery does)."""
    return worker.hostname.replace("%h", socket.gethostname())


def env_for(url: str) -> dict[str, str]:
    """REDIS_URL and CELERY_BROKER_URL for a Redis at ``url``."""
    return {"REDIS_URL": url, "CELERY_BROKER_URL": broker_url_for(url)}


def settings_for(url: str) -> Settings:
    """Settings of the checking side for a Redis at ``url``."""
    return load_settings(redis_url=url, celery_broker_url=broker_url_for(url))


def test_cli_exits_zero_for_a_consuming_worker_and_one_for_a_stranger(
    celery_worker_factory: WorkerFactory, redis_url: str
) -> None:
    """The command prints one line; exit 0 for a live worker (at the default timeout, as the
    liveness probe runs it), 1 for a node nobody runs (a short timeout, to end sooner)."""
    worker = celery_worker_factory()
    env = {**os.environ, **env_for(redis_url)}
    health = [script("asr-ingest"), "health"]
    done = subprocess.run(
        [*health, "--worker", node(worker)], env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout.count("\n")) == (0, 1), done.stdout + done.stderr
    assert done.stdout.startswith(f"ok: {node(worker)} consumed a ping in ")
    argv = [*health, "--timeout", str(TIMEOUT_S)]
    gone = subprocess.run(
        [*argv, "--worker", "nobody@nowhere"], env=env, capture_output=True, text=True, timeout=60
    )
    assert gone.returncode == 1 and gone.stdout.startswith("fail: nobody@nowhere"), gone.stdout


def test_frozen_worker_fails_within_the_bound(
    celery_worker_factory: WorkerFactory, redis_url: str
) -> None:
    """SIGSTOP (still connected, consuming nothing): the check fails within its bound; after
    SIGCONT the worker answers again and the stale ping (expired) is not what answers."""
    worker = celery_worker_factory()
    settings = settings_for(redis_url)
    started = time.monotonic()
    assert check(settings, node(worker), TIMEOUT_S).ok
    healthy_s = time.monotonic() - started
    os.killpg(worker.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        verdict = check(settings, node(worker), TIMEOUT_S)
        frozen_s = time.monotonic() - started
    finally:
        os.killpg(worker.process.pid, signal.SIGCONT)
    assert not verdict.ok and verdict.line.startswith("fail:"), verdict.line
    assert frozen_s <= BOUND_S
    assert check(settings, node(worker), TIMEOUT_S).ok
    print(f"health: healthy {healthy_s * 1000:.0f} ms, frozen verdict after {frozen_s:.1f} s")


def test_worker_answers_after_a_redis_restart(
    celery_worker_factory: WorkerFactory, private_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    """Redis stopped for 3 s and started again: the worker reconnects and consumes again (the
    ping round-trips and an archive task sent afterwards is archived), within 30 s."""
    worker = celery_worker_factory(env_for(private_redis.url))
    settings = settings_for(private_redis.url)
    assert check(settings, node(worker), TIMEOUT_S).ok
    private_redis.stop()
    time.sleep(3)
    private_redis.start()
    restarted = time.monotonic()
    wait_until(
        lambda: check(settings, node(worker), TIMEOUT_S).ok, timeout_s=30, what="ping answered"
    )
    recovered_s = time.monotonic() - restarted
    client = redis.Redis.from_url(private_redis.url)
    ReceiptStore(client, 600).claim("t-after", te.event("t-after", "fun-asr", None))
    create_celery(settings).send_task(ARCHIVE_TASK, args=["t-after"], queue=ARCHIVE_QUEUE)
    store = ReceiptStore(client, 600)
    wait_until(lambda: store.load("t-after").state in {"archived", "dead"}, what="consumed")
    print(f"health: ping answered {recovered_s:.1f} s after the Redis restart")


def test_busy_worker_passes_as_busy(
    celery_worker_factory: WorkerFactory,
    redis_url: str,
    redis_client: redis.Redis,
    result_server: ResultServer,
    tmp_path: Path,
) -> None:
    """One pool slot, busy with a slow archive: no ping can be taken, the verdict is busy (0)."""
    url = result_server.add("/r/slow.json", te.result_file(words=2000), chunk_delay_s=1.0)
    env = {
        **env_for(redis_url),
        "ARCHIVE_URLS": (tmp_path / "archive").as_uri(),
        "RESULT_URL_REGEX": result_server.url_regex,
    }
    worker = celery_worker_factory(env, concurrency=1)
    body = te.event("t-slow", "fun-asr", te.batch_output("t-slow", [te.ok(url)]))
    ReceiptStore(redis_client, 600).claim("t-slow", body)
    settings = settings_for(redis_url)
    create_celery(settings).send_task(ARCHIVE_TASK, args=["t-slow"], queue=ARCHIVE_QUEUE)
    wait_until(lambda: result_server.hits("/r/slow.json") == 1, what="slow download started")
    verdict = check(settings, node(worker), TIMEOUT_S)
    assert verdict.ok and verdict.line.startswith("busy:") and "1/1" in verdict.line, verdict
