"""Crash safety: a worker killed with SIGKILL mid-download; the restarted one resumes."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from core.queues import ARCHIVE_QUEUE, ARCHIVE_TASK
from core.settings import load_settings
from core.store import ReceiptStore
from tests.fixtures.objectstore import MotoProxy
from tests.fixtures.worker import WorkerFactory, broker_url_for, wait_until
from tests.support import task_events as te
from tests.support.result_server import Fault, ResultServer
from worker import create_celery

VISIBILITY_S = 5


def test_killed_worker_resumes_after_restart(
    celery_worker_factory: WorkerFactory, redis_url: str, redis_client: redis.Redis,
    result_server: ResultServer, moto_proxy: MotoProxy, s3_bucket: str, tmp_path: Path,
) -> None:  # fmt: skip
    """SIGKILL during a slow download: after the visibility timeout a new worker finishes
    the task; every object is written exactly once and the finished file is not refetched."""
    fast = te.result_file("a.wav", words=300)
    slow = te.result_file("b.wav", words=3000)
    url_a = result_server.add("/r/a.json", fast)
    url_b = result_server.add("/r/b.json", slow, faults=[Fault(delay_s=0.3)])
    env = {
        "ARCHIVE_URLS": f"{(tmp_path / 'archive').as_uri()},s3://{s3_bucket}/arch",
        "S3_ENDPOINT_URL": moto_proxy.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RESULT_URL_REGEX": result_server.url_regex,
        "BROKER_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_S),
        "ARCHIVE_LEASE_SECONDS": "2",
        # countdowns at most half the visibility timeout (worker/timeouts.py)
        "ARCHIVE_RETRY_MAX_SECONDS": "2",
        "DASHSCOPE_BREAKER_PROBE_SECONDS": "2",
        "ARCHIVE_SPOOL_DIR": str(tmp_path),
    }
    body = te.event("t-crash", "fun-asr", te.batch_output("t-crash", [te.ok(url_a), te.ok(url_b)]))
    ReceiptStore(redis_client, 600).claim("t-crash", body)
    first = celery_worker_factory(env)
    settings = load_settings(redis_url=redis_url, celery_broker_url=broker_url_for(redis_url))
    create_celery(settings).send_task(ARCHIVE_TASK, args=["t-crash"], queue=ARCHIVE_QUEUE)
    wait_until(lambda: result_server.hits("/r/b.json") == 1, what="slow download started")
    time.sleep(0.5)
    first.kill()
    killed_at = time.monotonic()
    manifest = tmp_path / "archive/t-crash/manifest.json"
    assert not manifest.exists() and (tmp_path / "archive/t-crash/results/0000.json").exists()
    assert redis_client.hlen("unacked") == 1  # the message is neither lost nor acknowledged
    time.sleep(max(0.0, VISIBILITY_S + 1 - (time.monotonic() - killed_at)))
    celery_worker_factory(env)
    store = ReceiptStore(redis_client, 600)
    wait_until(lambda: store.load("t-crash").state == "archived", timeout_s=30, what="archived")
    assert manifest.exists()
    assert (tmp_path / "archive/t-crash/results/0001.json").read_bytes() == slow
    assert (result_server.hits("/r/a.json"), result_server.hits("/r/b.json")) == (1, 2)
    prefix = f"/{s3_bucket}/arch/t-crash/"
    puts = sorted(p for m, p, _ in moto_proxy.requests if m == "PUT" and p.startswith(prefix))
    names = ["event.json", "manifest.json", "results/0000.json", "results/0001.json"]
    assert puts == [prefix + n for n in names]
