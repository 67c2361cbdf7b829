"""The archive task in a real Celery worker process: outcomes, exactly-once, the sweep."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from asr_ingest.starters import free_port
from core.queues import ARCHIVE_QUEUE, ARCHIVE_TASK
from core.settings import load_settings
from core.store import ReceiptStore
from tests.fixtures.objectstore import MotoProxy
from tests.fixtures.worker import WorkerFactory, broker_url_for, wait_until
from tests.support import task_events as te
from tests.support.result_server import Fault, ResultServer
from worker import AsrCelery, create_celery
from worker.archiving.dlq import DeadLetters
from worker.archiving.lease import INFLIGHT_KEY, count_delivery
from worker.archiving.tasks import sweep_once

BODY = te.result_file(words=200)


@pytest.fixture
def archive_env(
    tmp_path: Path, result_server: ResultServer, moto_proxy: MotoProxy, s3_bucket: str
) -> dict[str, str]:
    """Worker environment: archive to a directory, moto S3 and moto OSS (through the proxy)."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    return {
        "ARCHIVE_URLS": ",".join(
            [(tmp_path / "archive").as_uri(), f"s3://{s3_bucket}/arch", f"oss://{s3_bucket}/oss"]
        ),
        "S3_ENDPOINT_URL": moto_proxy.url,
        "OSS_ENDPOINT": moto_proxy.url,
        "OSS_ACCESS_KEY_ID": "testing",
        "OSS_ACCESS_KEY_SECRET": "testing",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RESULT_URL_REGEX": result_server.url_regex,
        "DASHSCOPE_API_KEY": "sk-test",
        "DASHSCOPE_BASE_URL": result_server.url + "/api/v1",
        "ARCHIVE_RETRY_BASE_SECONDS": "0.05",
        "ARCHIVE_MAX_ATTEMPTS": "3",
        "ARCHIVE_SPOOL_DIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }


@pytest.fixture
def producer(redis_url: str) -> AsrCelery:
    """A Celery app on the test's broker, used only to publish messages."""
    return create_celery(
        load_settings(redis_url=redis_url, celery_broker_url=broker_url_for(redis_url))
    )


def deliver(client: redis.Redis, producer: AsrCelery, task_id: str, body: bytes) -> None:
    """Store a receipt and publish its archive message, as the webhook does."""
    store = ReceiptStore(client, 600)
    store.claim(task_id, body, event_id=f"evt-{task_id}")
    producer.send_task(ARCHIVE_TASK, args=[task_id], queue=ARCHIVE_QUEUE)
    store.mark_enqueued(task_id)


def manifest(tmp_path: Path, task_id: str) -> dict[str, Any] | None:
    """The local manifest of ``task_id``, or None while it is missing."""
    path = tmp_path / "archive" / task_id / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def state(client: redis.Redis, task_id: str) -> str | None:
    """The receipt state of ``task_id``."""
    receipt = ReceiptStore(client, 600).load(task_id)
    return receipt.state if receipt else None


def metric(directory: str, name: str, labels: dict[str, str]) -> float:
    """A summed sample from the worker's multi-process metric files (0 when absent)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry.get_sample_value(name, labels) or 0.0


def test_worker_archives_and_dead_letters(
    celery_worker_factory: WorkerFactory, archive_env: dict[str, str], producer: AsrCelery,
    redis_client: redis.Redis, result_server: ResultServer, tmp_path: Path,
    moto_proxy: MotoProxy, s3_bucket: str, s3_client: Any,
) -> None:  # fmt: skip
    """A worker archives every family (after a 5xx retry, via the query fallback) and
    dead-letters an unknown model and a poison loop, with manifests, metrics, clean logs."""
    url = result_server.add("/r/ok.json", BODY, faults=[Fault(status=503)])
    qwen = result_server.add("/r/qwen.json", BODY)
    result_server.add_json(
        "/api/v1/tasks/t-query", {"output": te.batch_output("t-query", [te.ok(qwen)])}
    )
    count_delivery(redis_client, "t-poison", 600)  # one delivery already counted ...
    redis_client.set("asr:archive:deliveries:t-poison", 12)  # ... up to the limit
    worker = celery_worker_factory(archive_env, concurrency=2)
    deliver(
        redis_client,
        producer,
        "t-fun",
        te.event("t-fun", "fun-asr", te.batch_output("t-fun", [te.ok(url), te.failed()])),
    )
    deliver(
        redis_client,
        producer,
        "t-qwen",
        te.event("t-qwen", "qwen3-asr-flash-filetrans", te.qwen_output("t-qwen", qwen)),
    )
    deliver(redis_client, producer, "t-query", te.event("t-query", "paraformer-v2", None))
    deliver(
        redis_client,
        producer,
        "t-failed",
        te.event("t-failed", "fun-asr", te.failed_output("t-failed")),
    )
    deliver(redis_client, producer, "t-unknown", te.event("t-unknown", "whisper-9", None))
    deliver(
        redis_client,
        producer,
        "t-poison",
        te.event("t-poison", "fun-asr", te.failed_output("t-poison")),
    )
    ids = ["t-fun", "t-qwen", "t-query", "t-failed", "t-unknown", "t-poison"]
    wait_until(lambda: all(manifest(tmp_path, t) for t in ids), what="six manifests")
    final = {"archived", "dead"}
    wait_until(lambda: all(state(redis_client, t) in final for t in ids), what="final states")
    assert [state(redis_client, t) for t in ids] == ["archived"] * 4 + ["dead"] * 2
    assert (tmp_path / "archive/t-fun/results/0000.json").read_bytes() == BODY
    assert manifest(tmp_path, "t-fun")["files"][1]["code"] == "InvalidFile.DownloadFailed"
    assert (tmp_path / "archive/t-qwen/results/0000.json").read_bytes() == BODY
    assert (tmp_path / "archive/t-query/results/0000.json").read_bytes() == BODY
    assert manifest(tmp_path, "t-failed")["task_status"] == "FAILED"
    assert manifest(tmp_path, "t-unknown")["archive_error"]["reason"] == "unknown_model"
    letters = {d.task_id: d for d in DeadLetters(redis_client).list()}
    assert sorted(letters) == ["t-poison", "t-unknown"]
    assert letters["t-poison"].reason == "poison_loop"
    assert result_server.hits("/r/ok.json") == 2
    assert moto_proxy.count("PUT", f"/{s3_bucket}/arch/t-fun/results/0000.json") == 1
    metrics_dir = archive_env["PROMETHEUS_MULTIPROC_DIR"]
    assert metric(metrics_dir, "asr_archive_files_total", {"destination": "s3"}) == 3
    assert metric(metrics_dir, "asr_archive_files_total", {"destination": "oss"}) == 3
    oss_copy = s3_client.get_object(Bucket=s3_bucket, Key="oss/t-qwen/results/0000.json")
    assert oss_copy["Body"].read() == BODY
    assert metric(metrics_dir, "asr_archive_bytes_total", {"destination": "file"}) == 3 * len(BODY)
    assert metric(metrics_dir, "asr_archive_failures_total", {"reason": "unknown_model"}) == 1
    assert metric(metrics_dir, "asr_archive_lag_seconds_count", {}) == 4
    assert "Signature" not in worker.log() and "OSSAccessKeyId" not in worker.log()


def test_same_task_twenty_times_writes_each_object_once(
    celery_worker_factory: WorkerFactory, archive_env: dict[str, str], producer: AsrCelery,
    redis_client: redis.Redis, result_server: ResultServer, tmp_path: Path,
    moto_proxy: MotoProxy, s3_bucket: str,
) -> None:  # fmt: skip
    """20 concurrent enqueues of one task, 4 worker threads: every object is PUT once; each
    message that found the lease held came back and ended ``already_archived``."""
    urls = [result_server.add(f"/r/{i}.json", BODY, chunk_delay_s=0.05) for i in range(3)]
    body = te.event("t-20", "fun-asr", te.batch_output("t-20", [te.ok(u) for u in urls]))
    ReceiptStore(redis_client, 600).claim("t-20", body)
    worker = celery_worker_factory(archive_env, concurrency=4)

    def send() -> None:
        producer.send_task(ARCHIVE_TASK, args=["t-20"], queue=ARCHIVE_QUEUE)

    threads = [threading.Thread(target=send) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: manifest(tmp_path, "t-20"), what="manifest")
    wait_until(
        lambda: redis_client.llen("archive") == 0 and not redis_client.hlen("unacked"),
        what="queue drained",
    )
    prefix = f"/{s3_bucket}/arch/t-20/"
    puts = [p for m, p, _ in moto_proxy.requests if m == "PUT" and p.startswith(prefix)]
    expected = [
        prefix + k
        for k in (
            "event.json",
            "results/0000.json",
            "results/0001.json",
            "results/0002.json",
            "manifest.json",
        )
    ]
    assert sorted(puts) == sorted(expected)
    assert [result_server.hits(f"/r/{i}.json") for i in range(3)] == [1, 1, 1]
    assert state(redis_client, "t-20") == "archived"
    outcomes = re.findall(r'"outcome": "(\w+)", "ms": \d+, "event": "archive_task"', worker.log())
    finished = [o for o in outcomes if o != "retry"]  # a held lease retries, never drops
    assert len(finished) == 20 and finished.count("archived") == 1
    assert set(outcomes) <= {"archived", "retry", "already_archived"}


def test_sweep_reenqueues_lost_receipts_and_stuck_tasks(
    celery_worker_factory: WorkerFactory, archive_env: dict[str, str], producer: AsrCelery,
    redis_client: redis.Redis, result_server: ResultServer, tmp_path: Path,
) -> None:  # fmt: skip
    """Receipts never enqueued and archiving whose lease died are re-enqueued and archived."""
    url = result_server.add("/r/a.json", BODY)
    store = ReceiptStore(redis_client, 600)
    store.claim(
        "t-lost", te.event("t-lost", "fun-asr", te.batch_output("t-lost", [te.ok(url)])), now=1.0
    )
    store.claim("t-stuck", te.event("t-stuck", "fun-asr", te.failed_output("t-stuck")))
    store.set_state("t-stuck", "archiving")
    redis_client.zadd(INFLIGHT_KEY, {"t-stuck": 1.0, "t-live": 1.0})
    redis_client.set("asr:archive:lease:t-live", "someone")
    producer.settings = load_settings(
        redis_url=producer.settings.redis_url, archive_stuck_after_seconds=60
    )
    assert sweep_once(producer) == {"receipts": 1, "stuck": 1, "open": 0}
    assert redis_client.llen("archive") == 2 and store.stale_pending(0) == []
    celery_worker_factory(archive_env)
    done = ("t-lost", "t-stuck")
    wait_until(lambda: all(state(redis_client, t) == "archived" for t in done), what="archived")
    assert manifest(tmp_path, "t-lost") and manifest(tmp_path, "t-stuck")
    assert redis_client.zscore(INFLIGHT_KEY, "t-live") == 1.0


def test_unreachable_destination_exhausts_retries(
    celery_worker_factory: WorkerFactory, archive_env: dict[str, str], producer: AsrCelery,
    redis_client: redis.Redis, result_server: ResultServer,
) -> None:  # fmt: skip
    """A destination that never answers is retried with backoff, then dead-lettered."""
    url = result_server.add("/r/a.json", BODY)
    env = {
        **archive_env,
        "ARCHIVE_URLS": "s3://bucket/arch",
        "S3_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    env["AWS_MAX_ATTEMPTS"] = "1"
    worker = celery_worker_factory(env)
    deliver(
        redis_client,
        producer,
        "t-down",
        te.event("t-down", "fun-asr", te.batch_output("t-down", [te.ok(url)])),
    )
    letter = wait_until(lambda: DeadLetters(redis_client).get("t-down"), what="dead letter")
    assert (letter.reason, letter.attempts) == ("destination_unavailable", 3)
    assert state(redis_client, "t-down") == "dead"
    assert worker.log().count("Retry in") == 2


def test_worker_serves_its_metrics(
    celery_worker_factory: WorkerFactory, archive_env: dict[str, str], producer: AsrCelery,
    redis_client: redis.Redis, result_server: ResultServer, tmp_path: Path,
) -> None:  # fmt: skip
    """With WORKER_METRICS_PORT set, the worker's /metrics counts the files it archived."""
    port = free_port()
    url = result_server.add("/r/metrics.json", BODY)
    celery_worker_factory({**archive_env, "WORKER_METRICS_PORT": str(port)}, concurrency=1)
    output = te.batch_output("t-metrics", [te.ok(url)])
    deliver(redis_client, producer, "t-metrics", te.event("t-metrics", "fun-asr", output))
    wait_until(lambda: manifest(tmp_path, "t-metrics"), timeout_s=30)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'asr_archive_files_total{destination="file"} 1.0' in text
    assert 'asr_archive_files_total{destination="s3"} 1.0' in text


def test_task_events_flow_only_while_enabled(
    celery_worker_factory: WorkerFactory, archive_env: dict[str, str], producer: AsrCelery,
    redis_client: redis.Redis, result_server: ResultServer, tmp_path: Path,
) -> None:  # fmt: skip
    """By default a worker publishes no task events; once enabled by broadcast (what Flower
    does while it runs), each archived task publishes its task-succeeded event."""
    url = result_server.add("/r/events.json", BODY)
    listener = redis_client.pubsub(ignore_subscribe_messages=True)
    listener.psubscribe("*celeryev*")
    celery_worker_factory(archive_env, concurrency=1)

    def archive(task_id: str) -> None:
        output = te.batch_output(task_id, [te.ok(url)])
        deliver(redis_client, producer, task_id, te.event(task_id, "fun-asr", output))
        wait_until(lambda: state(redis_client, task_id) == "archived", what=f"{task_id} archived")

    archive("t-events-off")
    producer.control.enable_events()  # the broadcast also flushes any buffered task events
    wait_until(lambda: listener.get_message(timeout=0.1), what="an event once enabled")
    archive("t-events-on")
    time.sleep(3)  # buffered task events are flushed within a heartbeat (2 s)
    events = []
    while message := listener.get_message(timeout=0.1):
        body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
        events += body if isinstance(body, list) else [body]
    names = {event["uuid"]: event.get("args", "") for event in events if "args" in event}
    tasks = [(event["type"], names.get(event.get("uuid"), "")) for event in events]
    assert ("task-succeeded", "['t-events-on']") in tasks
    assert not [kind for kind, args in tasks if "t-events-off" in args]
