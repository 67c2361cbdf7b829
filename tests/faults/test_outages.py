"""Outages that pass or do not: a failing result host, object stores down, a full or read-only
disk, results that dribble. Default settings unless a test names one."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import boto3
import redis

from core.settings import load_settings
from tests.faults.support import Clock, deliver, manifest, producer, report, state, worker_env
from tests.fixtures.faults import RestartableMoto
from tests.fixtures.worker import WorkerFactory, wait_until
from tests.support import task_events as te
from tests.support.result_server import Fault, ResultServer
from worker.archiving.dlq import DeadLetters

SMALL = te.result_file(words=20)
BIG = te.result_file(words=2000)  # about 150 KB


def test_result_host_failing_until_the_links_expire(
    celery_worker_factory: WorkerFactory, redis_url: str, redis_client: redis.Redis,
    result_server: ResultServer, tmp_path: Path,
) -> None:  # fmt: skip
    """One file's host answers 503 until its links (Expires 20 s ahead) expire: retried with
    the default backoff, then dead-lettered ``result_http_5xx`` before the expiry, with a
    manifest that records both files (the good one archived)."""
    archive = tmp_path / "archive"
    celery_worker_factory(worker_env(result_server, [archive.as_uri()], tmp_path / "spool"))
    expires_at = time.time() + 20
    good = result_server.add("/r/good.json", SMALL, expires_in_s=20)
    bad = result_server.add(
        "/r/bad.json", SMALL, faults=[Fault(status=503)] * 1000, expires_in_s=20
    )
    clock = Clock()
    deliver(redis_client, producer(redis_url), "t-503", [good, bad])
    letter = wait_until(lambda: DeadLetters(redis_client).get("t-503"), 30, "dead letter")
    report("result host 503 until expiry (links 20 s): delivery to dead letter", clock())
    assert time.time() < expires_at
    assert letter.reason == "result_http_5xx"  # type: ignore[attr-defined]  # a DeadLetter
    assert result_server.hits("/r/bad.json") >= 3  # retried, not given up at once
    found = manifest(archive, "t-503")
    assert found is not None and found["archive_status"] == "partial"
    first, second = found["files"]
    assert first["key"] == "t-503/results/0000.json" and first["error"] is None
    assert second["key"] is None and second["error"]["reason"] == "result_http_5xx"
    assert state(redis_client, "t-503") == "dead"


def test_object_stores_down_for_a_minute(
    celery_worker_factory: WorkerFactory, redis_url: str, redis_client: redis.Redis,
    result_server: ResultServer, restartable_moto: RestartableMoto, tmp_path: Path,
) -> None:  # fmt: skip
    """S3 and OSS (one moto server behind both) refuse connections for 60 s while three tasks
    arrive: every task is archived after they return, none is dead-lettered or replayed.
    The wait after the return is the backoff in force, bounded by ARCHIVE_RETRY_MAX_SECONDS
    (300 s by default): full jitter makes some countdowns tiny, so more retries fit in the
    outage and the next countdown may reach the cap (usually it is far less)."""
    s3 = boto3.client("s3", endpoint_url=restartable_moto.url, region_name="us-east-1")
    s3.create_bucket(Bucket="outage")
    env = worker_env(result_server, ["s3://outage/arch", "oss://outage/oss"], tmp_path / "spool")
    env.update(
        S3_ENDPOINT_URL=restartable_moto.url, OSS_ENDPOINT=restartable_moto.url,
        OSS_ACCESS_KEY_ID="testing", OSS_ACCESS_KEY_SECRET="testing",
    )  # fmt: skip
    celery_worker_factory(env)
    restartable_moto.stop()
    ids = [f"t-s3-{n}" for n in range(3)]
    for task_id in ids:
        url = result_server.add(f"/r/{task_id}.json", SMALL)
        deliver(redis_client, producer(redis_url), task_id, [url])
    time.sleep(60)
    assert not any(state(redis_client, t) == "archived" for t in ids)
    restartable_moto.start()
    clock = Clock()
    bound = load_settings().archive_retry_max_seconds + 30  # the cap, plus the run itself
    wait_until(lambda: all(state(redis_client, t) == "archived" for t in ids), bound, "archived")
    report("S3+OSS down 60 s: return to all archived", clock())
    assert DeadLetters(redis_client).list() == []
    for task_id in ids:
        for key in (f"arch/{task_id}/manifest.json", f"oss/{task_id}/manifest.json"):
            s3.head_object(Bucket="outage", Key=key)


def test_archive_disk_full_then_freed(
    celery_worker_factory: WorkerFactory, redis_url: str, redis_client: redis.Redis,
    result_server: ResultServer, small_disk: Path, tmp_path: Path,
) -> None:  # fmt: skip
    """The archive directory's 1 MiB disk is full (ENOSPC): the task waits (``disk_full``,
    retried); once space is freed it is archived."""
    filler = small_disk / "filler"
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False
    )
    env = worker_env(result_server, [small_disk.as_uri()], tmp_path / "spool")
    worker = celery_worker_factory(env)
    deliver(redis_client, producer(redis_url), "t-full", [result_server.add("/r/full.json", BIG)])
    wait_until(lambda: '"reason": "disk_full"' in worker.log(), what="a disk_full retry")
    time.sleep(3)
    assert state(redis_client, "t-full") == "archiving" and not DeadLetters(redis_client).list()
    filler.unlink()
    clock = Clock()
    wait_until(lambda: state(redis_client, "t-full") == "archived", 60, "archived")
    report("archive disk full: freed to archived", clock())
    assert manifest(small_disk, "t-full") is not None


def test_archive_directory_read_only(
    celery_worker_factory: WorkerFactory, redis_url: str, redis_client: redis.Redis,
    result_server: ResultServer, small_disk: Path, tmp_path: Path,
) -> None:  # fmt: skip
    """A read-only archive file system (EROFS) is a dead letter ``destination_rejected`` at
    once, not a task stuck in ``archiving``."""
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    celery_worker_factory(worker_env(result_server, [small_disk.as_uri()], tmp_path / "spool"))
    clock = Clock()
    deliver(redis_client, producer(redis_url), "t-ro", [result_server.add("/r/ro.json", SMALL)])
    letter = wait_until(lambda: DeadLetters(redis_client).get("t-ro"), 30, "dead letter")
    report("archive directory read-only: delivery to dead letter", clock())
    assert letter.reason == "destination_rejected"  # type: ignore[attr-defined]  # a DeadLetter
    assert "Read-only" in letter.last_error  # type: ignore[attr-defined]  # a DeadLetter
    assert state(redis_client, "t-ro") == "dead"


def test_dribbling_results_do_not_starve_other_tasks(
    celery_worker_factory: WorkerFactory, redis_url: str, redis_client: redis.Redis,
    result_server: ResultServer, tmp_path: Path,
) -> None:  # fmt: skip
    """RESULT_TIMEOUT_SECONDS=3 (named): two results dribbling 16 KiB a second (a 10 s
    download each, every read within the read timeout) take both worker slots; the total
    deadline ends them after about 3 s and two other tasks are archived meanwhile."""
    archive = tmp_path / "archive"
    env = worker_env(result_server, [archive.as_uri()], tmp_path / "spool")
    env["RESULT_TIMEOUT_SECONDS"] = "3"
    celery_worker_factory(env, concurrency=2)
    app = producer(redis_url)
    for n in range(2):
        url = result_server.add(f"/r/drip{n}.json", BIG, chunk_delay_s=1.0)
        deliver(redis_client, app, f"t-drip-{n}", [url])
    wait_until(lambda: result_server.hits("/r/drip1.json") >= 1, what="both slots dribbling")
    clock = Clock()
    for n in range(2):
        url = result_server.add(f"/r/quick{n}.json", SMALL)
        deliver(redis_client, app, f"t-quick-{n}", [url])
    quick = ["t-quick-0", "t-quick-1"]
    wait_until(lambda: all(state(redis_client, t) == "archived" for t in quick), 20, "quick ones")
    waited = report("dribbling results: quick tasks archived after", clock())
    assert waited < 9  # the 3 s deadline plus one read and the first backoff, not 10 s
    assert state(redis_client, "t-drip-0") != "archived"
    assert not DeadLetters(redis_client).list()  # a slow host is transient
