"""Archive throughput and memory benchmark (run by ``make bench``; standalone, no pytest).

Run 1 (throughput): FILES result files of about 50 KB each, served by a static HTTP server
process, archived to moto S3 (a ``moto_server`` process) by a real Celery worker at
concurrency C (threads), as TASKS tasks of FILES/TASKS files. Baseline in the same run: a raw
loop in this process that downloads each file with httpx and PUTs it with boto3, on C
threads. Both start warm (clients built). Prints files/s and MB/s for both and the ratio
(target >= 0.8). Each archive task also checks for its manifest and writes event.json and
manifest.json (three requests per task that the raw loop does not make).

Run 2 (memory): one result of BIG_MB MB archived by the worker to a local directory and to
moto S3 (multipart); prints the worker's peak RSS growth (``VmHWM`` in ``/proc``; target
< 64 MB) and MB/s.

Environment knobs: ``BENCH_FILES`` (500), ``BENCH_TASKS`` (20), ``BENCH_CONCURRENCY`` (4),
``BENCH_BIG_MB`` (1024; 0 skips run 2), ``BENCH_POOL`` (the worker pool, ``threads``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402  # after the path set-up above
import httpx  # noqa: E402
import redis  # noqa: E402

from asr_ingest.embedded import EmbeddedRedis  # noqa: E402
from core.queues import ARCHIVE_QUEUE, ARCHIVE_TASK  # noqa: E402
from core.settings import load_settings  # noqa: E402
from core.store import ReceiptStore  # noqa: E402
from tests.fixtures.worker import CELERY, WorkerProcess, broker_url_for  # noqa: E402
from tests.support import task_events as te  # noqa: E402
from worker import create_celery  # noqa: E402

FILES = int(os.environ.get("BENCH_FILES", "500"))
TASKS = int(os.environ.get("BENCH_TASKS", "20"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "4"))
BIG_MB = int(os.environ.get("BENCH_BIG_MB", "1024"))
AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(args: list[str], url: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a server process and wait until ``url`` answers."""
    quiet = subprocess.DEVNULL
    process = subprocess.Popen(args, cwd=cwd, stdout=quiet, stderr=quiet)
    for _ in range(200):
        try:
            httpx.get(url, timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{args[0]} did not start")


def write_results(directory: Path) -> int:
    """Write FILES result files of about 50 KB under ``directory/r``; their total bytes."""
    (directory / "r").mkdir(parents=True)
    total = 0
    for i in range(FILES):
        body = te.result_file(f"{i}.wav", words=560)
        (directory / "r" / f"{i:04d}.json").write_bytes(body)
        total += len(body)
    return total


def write_big(path: Path, megabytes: int) -> int:
    """Write one valid JSON result of about ``megabytes`` MB; its size in bytes."""
    word = b'{"begin_time": 100, "end_time": 200, "text": "hello ", "punctuation": ""},'
    block = word * (1024 * 1024 // len(word))
    with path.open("wb") as out:
        out.write(b'{"file_url": "https://media.example/big.wav", "words": [')
        for _ in range(megabytes):
            out.write(block)
        out.write(b'{"text": "end"}]}')
    return path.stat().st_size


def raw_loop(base: str, s3: Any, bucket: str) -> float:
    """Download and PUT every file on CONCURRENCY threads; seconds taken."""
    client = httpx.Client(timeout=30)

    def one(i: int) -> None:
        body = client.get(f"{base}/r/{i:04d}.json").content
        s3.put_object(Bucket=bucket, Key=f"raw/{i:04d}.json", Body=body)

    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(FILES)))
    return time.perf_counter() - started


def enqueue(redis_url: str, tasks: dict[str, list[str]], model: str = "fun-asr") -> None:
    """Store a receipt per task (results = its URLs) and publish its archive message."""
    client = redis.Redis.from_url(redis_url)
    store = ReceiptStore(client, 3600)
    app = create_celery(
        load_settings(redis_url=redis_url, celery_broker_url=broker_url_for(redis_url))
    )
    for task_id, urls in tasks.items():
        store.claim(
            task_id, te.event(task_id, model, te.batch_output(task_id, [te.ok(u) for u in urls]))
        )
    for task_id in tasks:
        app.send_task(ARCHIVE_TASK, args=[task_id], queue=ARCHIVE_QUEUE)


def wait_archived(redis_url: str, task_ids: list[str], timeout_s: float = 900) -> None:
    """Block until every receipt is ``archived``; raises on ``dead`` or timeout."""
    store = ReceiptStore(redis.Redis.from_url(redis_url), 3600)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = [r.state if (r := store.load(t)) else "?" for t in task_ids]
        if "dead" in states:
            raise RuntimeError(f"a task was dead-lettered: {states}")
        if all(s == "archived" for s in states):
            return
        time.sleep(0.02)
    raise RuntimeError("archiving did not finish")


def peak_rss_kb(pid: int) -> int:
    """``VmHWM`` (peak resident set) of process ``pid``, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def worker(redis_url: str, env: dict[str, str], log: Path) -> WorkerProcess:
    """A real worker on the archive queue at CONCURRENCY threads."""
    full = {**os.environ, **AWS, **env, "REDIS_URL": redis_url, "LOG_FORMAT": "json"}
    full["CELERY_BROKER_URL"] = broker_url_for(redis_url)
    args = [
        CELERY,
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        "archive",
        "--pool",
        os.environ.get("BENCH_POOL", "threads"),
        "--concurrency",
        str(CONCURRENCY),
        "--loglevel",
        "INFO",
        "--hostname",
        f"bench-{uuid.uuid4().hex[:6]}@%h",
    ]
    return WorkerProcess(args, full, log, "bench").wait_ready(60)


def main() -> None:
    """Run both benchmarks and print the figures."""
    with (
        tempfile.TemporaryDirectory(prefix="archive-bench-") as tmp,
        EmbeddedRedis() as redis_server,
    ):
        work = Path(tmp)
        static_port, moto_port = free_port(), free_port()
        base, moto = f"http://127.0.0.1:{static_port}", f"http://127.0.0.1:{moto_port}"
        total = write_results(work / "www")
        servers = [
            start(
                [sys.executable, "-m", "http.server", str(static_port), "--bind", "127.0.0.1"],
                base + "/",
                cwd=work / "www",
            ),
            start(
                [
                    str(Path(sys.executable).with_name("moto_server")),
                    "-H",
                    "127.0.0.1",
                    "-p",
                    str(moto_port),
                ],
                moto + "/moto-api/",
            ),
        ]
        try:
            run(work, redis_server.url, base, moto, total)
        finally:
            for server in servers:
                server.terminate()
                server.wait(10)


def run(work: Path, redis_url: str, base: str, moto: str, total: int) -> None:
    """The two runs, given the servers."""
    os.environ.update(AWS)
    s3 = boto3.client("s3", endpoint_url=moto)
    s3.create_bucket(Bucket="bench")
    env = {
        "ARCHIVE_URLS": "s3://bench/arch",
        "S3_ENDPOINT_URL": moto,
        "RESULT_URL_REGEX": r"http://127\.0\.0\.1:\d+/[^#\s]*",
        "ARCHIVE_SPOOL_DIR": str(work),
        "ARCHIVE_MULTIPART_BYTES": str(16 * 1024 * 1024),
    }
    raw_s = raw_loop(base, s3, "bench")
    proc = worker(redis_url, env, work / "worker.log")
    try:
        per_task = FILES // TASKS
        urls = [f"{base}/r/{i:04d}.json" for i in range(FILES)]
        tasks = {f"t{n:03d}": urls[n * per_task : (n + 1) * per_task] for n in range(TASKS)}
        enqueue(redis_url, {"warm-up": urls[:1]})  # clients are built once per process
        wait_archived(redis_url, ["warm-up"])
        started = time.perf_counter()
        enqueue(redis_url, tasks)
        wait_archived(redis_url, list(tasks))
        ours_s = time.perf_counter() - started
    finally:
        proc.stop()
    mb = total / 1e6
    print(f"run 1: {FILES} files, {mb:.1f} MB, concurrency {CONCURRENCY}, {TASKS} tasks -> moto S3")
    print(f"  raw loop : {FILES / raw_s:8.1f} files/s {mb / raw_s:7.1f} MB/s")
    print(f"  worker   : {FILES / ours_s:8.1f} files/s {mb / ours_s:7.1f} MB/s")
    print(f"  ratio    : {raw_s / ours_s:.2f} (target >= 0.8)")
    if BIG_MB:
        big(work, redis_url, base, moto, env)


def big(work: Path, redis_url: str, base: str, moto: str, env: dict[str, str]) -> None:
    """Run 2: one BIG_MB result through the worker; peak RSS growth and throughput."""
    size = write_big(work / "www" / "r" / "big.json", BIG_MB)
    env = {**env, "ARCHIVE_URLS": f"{(work / 'archive').as_uri()},s3://bench/big"}
    proc = worker(redis_url, env, work / "worker-big.log")
    try:
        enqueue(redis_url, {"warm": [f"{base}/r/0000.json"]})
        wait_archived(redis_url, ["warm"])
        before = peak_rss_kb(proc.process.pid)
        started = time.perf_counter()
        enqueue(redis_url, {"big": [f"{base}/r/big.json"]})
        wait_archived(redis_url, ["big"], timeout_s=1800)
        took = time.perf_counter() - started
        growth_mb = (peak_rss_kb(proc.process.pid) - before) / 1024
    finally:
        proc.stop()
    manifest = json.loads((work / "archive/big/manifest.json").read_text())
    assert manifest["files"][0]["bytes"] == size
    print(f"run 2: one {size / 1e6:.0f} MB result -> local directory + moto S3 (multipart)")
    rate = size / 1e6 / took
    print(f"  worker   : {rate:7.1f} MB/s, peak RSS growth {growth_mb:.1f} MB (target < 64 MB)")


if __name__ == "__main__":
    main()
