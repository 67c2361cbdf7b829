"""RabbitMQ end to end: two webhook replicas, three workers, real signed deliveries, a restart.

Real processes: a private ``rabbitmq-server`` node (session fixture), gunicorn webhooks, Celery
workers; receipts in the session's Redis; results from a local result server (which counts
fetches); the archive on disk and in S3 (moto behind a proxy that counts PUTs).
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from core.broker import publisher
from core.queues import ARCHIVE_QUEUE, SUBMIT_QUEUE
from core.settings import load_settings
from tests.brokers.conftest import (
    Deliveries,
    StartWebhook,
    deliver_until_ok,
    manifests,
    task_body,
)
from tests.fixtures.objectstore import MotoProxy
from tests.fixtures.rabbitmq import RabbitNode
from tests.fixtures.worker import WorkerFactory, wait_until
from tests.support.eventbridge_signer import Signer
from tests.support.result_server import ResultServer

pytestmark = pytest.mark.e2e

TASKS = 200
DELIVERIES_PER_TASK = 10
CLIENTS = 16


def purge(url: str) -> None:
    """Empty the archive and submit queues (declared if missing): each test starts clean."""
    app = publisher(load_settings(celery_broker_url=url))
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in app.conf.task_queues:
            assert queue.name in (ARCHIVE_QUEUE, SUBMIT_QUEUE)
            queue(channel).declare()
            queue(channel).purge()


@pytest.fixture
def pipeline(
    rabbitmq_node: RabbitNode,
    redis_url: str,
    start_webhook: StartWebhook,
    celery_worker_factory: WorkerFactory,
    result_server: ResultServer,
    moto_proxy: MotoProxy,
    s3_bucket: str,
    tmp_path: Path,
) -> list[str]:
    """Two webhook replicas and three workers on the RabbitMQ node; the replicas' URLs."""
    purge(rabbitmq_node.url)
    env = {"REDIS_URL": redis_url, "CELERY_BROKER_URL": rabbitmq_node.url}
    replicas = [start_webhook(env).spec.url for _ in range(2)]
    worker_env = {
        **env,
        "ARCHIVE_URLS": f"{(tmp_path / 'archive').as_uri()},s3://{s3_bucket}/arch",
        "S3_ENDPOINT_URL": moto_proxy.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RESULT_URL_REGEX": result_server.url_regex,
    }
    for _ in range(3):
        celery_worker_factory(worker_env, concurrency=2)
    return replicas


def deliver_all(
    replicas: list[str], signer: Signer, bodies: dict[str, bytes], copies: int, seen: Deliveries
) -> None:
    """Deliver each body ``copies`` times, shuffled, over the replicas from parallel clients."""
    jobs = [task_id for task_id in bodies for _ in range(copies)]
    random.Random(7).shuffle(jobs)

    def one(n: int) -> None:
        task_id = jobs[n]
        deliver_until_ok(replicas[n % len(replicas)], signer, task_id, bodies[task_id], seen)

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, range(len(jobs))))


def assert_each_written_once(
    task_ids: list[str], archive: Path, result_server: ResultServer, proxy: MotoProxy, bucket: str
) -> None:
    """One manifest per task on disk and in S3; each result fetched once and PUT once."""
    found = manifests(archive)
    assert sorted(found) == sorted(task_ids)
    assert {m["task_status"] for m in found.values()} == {"SUCCEEDED"}
    assert [t for t in task_ids if result_server.hits(f"/r/{t}.json") != 1] == []
    puts: dict[str, int] = {}
    for method, path, _size in proxy.requests:
        if method == "PUT":
            puts[path] = puts.get(path, 0) + 1
    for task_id in task_ids:
        for name in ("event.json", "results/0000.json", "manifest.json"):
            assert puts.get(f"/{bucket}/arch/{task_id}/{name}") == 1, (task_id, name)


def test_two_hundred_tasks_ten_deliveries_each_archive_once(
    pipeline: list[str],
    signer: Signer,
    result_server: ResultServer,
    moto_proxy: MotoProxy,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    """200 tasks x 10 signed deliveries over 2 replicas, 3 workers: 200 accepted, 1800
    duplicates, 200 manifests; each result fetched once and each object written once."""
    bodies = {f"rmq-{n:03d}": task_body(result_server, f"rmq-{n:03d}") for n in range(TASKS)}
    seen = Deliveries()
    started = time.monotonic()
    deliver_all(pipeline, signer, bodies, DELIVERIES_PER_TASK, seen)
    delivered_s = time.monotonic() - started
    assert seen.outcomes == {"accepted": TASKS, "duplicate": TASKS * (DELIVERIES_PER_TASK - 1)}
    archive = tmp_path / "archive"
    wait_until(lambda: len(manifests(archive)) == TASKS, timeout_s=90, what="200 manifests")
    archived_s = time.monotonic() - started
    time.sleep(1)  # a late duplicate would show as a second fetch or PUT
    assert_each_written_once(list(bodies), archive, result_server, moto_proxy, s3_bucket)
    print(f"rabbitmq: 2000 deliveries in {delivered_s:.1f} s, 200 archived at {archived_s:.1f} s")


def test_broker_restart_mid_run_loses_nothing_acknowledged(
    pipeline: list[str],
    rabbitmq_node: RabbitNode,
    signer: Signer,
    result_server: ResultServer,
    tmp_path: Path,
) -> None:
    """The node stopped and started again (same data) while deliveries continue: 503s during
    the outage, retried like EventBridge; every task answered 200 ends archived."""
    bodies = {f"rst-{n:03d}": task_body(result_server, f"rst-{n:03d}") for n in range(120)}
    seen = Deliveries()
    timings: dict[str, Any] = {}

    def restart() -> None:
        wait_until(lambda: len(seen.acknowledged) >= 30, timeout_s=60, what="30 acknowledged")
        timings["stopped_at"] = time.monotonic()
        rabbitmq_node.stop()
        time.sleep(2)
        rabbitmq_node.start()
        timings["started_at"] = time.monotonic()
        timings["node_start_s"] = rabbitmq_node.started_in_s

    with ThreadPoolExecutor(1) as side:
        restarting = side.submit(restart)
        slow = {task_id: body for task_id, body in bodies.items()}
        deliver_all(pipeline, signer, slow, 3, seen)
        restarting.result()
    assert seen.acknowledged == set(bodies)
    archive = tmp_path / "archive"
    wait_until(
        lambda: set(manifests(archive)) >= seen.acknowledged, timeout_s=120, what="all archived"
    )
    done_s = time.monotonic() - timings["started_at"]
    print(
        f"rabbitmq restart: answers {dict(seen.statuses)}, node start {timings['node_start_s']:.1f}"
        f" s, everything archived {done_s:.1f} s after the node was back"
    )
