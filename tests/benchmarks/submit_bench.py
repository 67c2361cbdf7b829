"""Benchmark: 10,000 small files through upload and submission, against two floors.

Run by ``make bench`` (``python tests/benchmarks/submit_bench.py [--files N]``). It starts an
embedded Redis, moto (a child process) as OSS, the sandbox in this process with a submit limit
of 20 requests/s for Paraformer (tasks never start: only submission is measured), and a real
Celery worker (4 threads, each batch uploading with ``UPLOAD_THREADS`` threads).

1. Upload alone: the same files uploaded by :class:`worker.submission.media.MediaBucket`
   with the same parallelism (4 x ``UPLOAD_THREADS`` threads), to another prefix.
2. The pipeline: ``submit_paths`` (walk, plan, enqueue 100 batches) until the last batch is
   submitted, with ``SUBMIT_RATES`` at 20/s for Paraformer.

Floor = max(upload alone, 100 batches / 20 per s). Target (issue 5): pipeline <= 1.2 x floor.
``--repeat`` runs both measurements that many times on fresh servers; the figure is the median
ratio. ``--json-out`` writes it for ``tests/benchmarks/summary.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO_ROOT))

import boto3  # noqa: E402  # after the sys.path line above
import redis  # noqa: E402

from asr_ingest.embedded import EmbeddedRedis  # noqa: E402
from asr_ingest.stack import Stack  # noqa: E402
from asr_ingest.starters import broker_url_for, free_port, moto_spec, worker_spec  # noqa: E402
from asr_ingest.submit_cmd import submit_paths  # noqa: E402
from core.settings import load_settings  # noqa: E402
from sandbox.config import SandboxConfig  # noqa: E402
from sandbox.server import Sandbox  # noqa: E402
from tests.benchmarks.common import Figure, median_of, write_figures  # noqa: E402
from worker.submission.media import MediaBucket, sha256_of, walk  # noqa: E402
from worker.submission.submissions import SubmissionStore  # noqa: E402

MODEL = "paraformer-v2"
RATE = 20.0
WORKER_THREADS = 4
UPLOAD_THREADS = 8


def make_files(directory: Path, count: int, size: int = 2048) -> None:
    """``count`` distinct ``size``-byte .wav files (content never decoded: tasks never start)."""
    directory.mkdir(parents=True)
    for n in range(count):
        (directory / f"clip{n:05d}.wav").write_bytes(os.urandom(size))


def upload_alone(settings_env: dict[str, str], directory: Path) -> float:
    """Seconds to hash and upload every file with the pipeline's parallelism."""
    settings = load_settings(**{k.lower(): v for k, v in settings_env.items()})
    media = MediaBucket.from_settings(settings)
    accepted, _ = walk([directory])
    started = time.perf_counter()

    def one(path: str, size: int) -> None:
        media.upload(path, media.object_key(sha256_of(path), path), size)

    with ThreadPoolExecutor(WORKER_THREADS * UPLOAD_THREADS) as pool:
        list(pool.map(lambda m: one(m.path, m.size), accepted))
    return time.perf_counter() - started


def pipeline(settings_env: dict[str, str], directory: Path, files: int) -> float:
    """Seconds from ``submit_paths`` until every file is submitted."""
    settings = load_settings(**{k.lower(): v for k, v in settings_env.items()})
    client = redis.Redis.from_url(settings.redis_url)
    store = SubmissionStore(client, settings.submission_ttl_seconds)
    started = time.perf_counter()
    report = submit_paths(settings, [str(directory)], MODEL, {})
    while True:
        info = store.run_info(report.run_id) or {}
        settled = info.get("submitted", 0) + info.get("failed", 0) + info.get("duplicate", 0)
        if settled >= files:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if info.get("failed"):
        raise SystemExit(f"{info['failed']} files failed")
    return elapsed


def main() -> None:
    """Run ``--repeat`` rounds of both measurements; print and write the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the figure is the median")
    parser.add_argument("--json-out", help="write the figures here (JSON)")
    args = parser.parse_args()
    rounds = [measure(args.files) for _ in range(args.repeat)]
    ratios = tuple(r["ratio"] for r in rounds)
    note = (
        f"{args.files} files; floor {median_of(r['floor_s'] for r in rounds):.1f} s "
        f"(upload alone {median_of(r['upload_alone_s'] for r in rounds):.1f} s, rate "
        f"{rounds[0]['rate_floor_s']:.1f} s), pipeline "
        f"{median_of(r['pipeline_s'] for r in rounds):.1f} s"
    )
    figure = Figure(
        "upload+submit vs max(rate floor, upload alone)",
        median_of(ratios),
        "x",
        "<=",
        1.2,
        note,
        ratios,
    )
    write_figures(args.json_out, "submit", [figure], {"rounds": rounds})


def measure(files: int) -> dict[str, float]:
    """One round on fresh servers: upload alone, then the pipeline; seconds and the ratio."""
    work = Path(tempfile.mkdtemp(prefix="submit-bench-"))
    make_files(work / "media", files)
    (work / "redis").mkdir()
    embedded = EmbeddedRedis(work / "redis").start()
    stack = Stack(sink=lambda line: None, handle_signals=False, grace_s=5)
    config = SandboxConfig(submit_rps={"paraformer": RATE}, pending_seconds=86_400.0)
    box = Sandbox(config).start()
    try:
        moto = stack.start(moto_spec(free_port()))
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3 = boto3.client(
            "s3",
            endpoint_url=moto.spec.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket=bucket)
        env = {
            "REDIS_URL": embedded.url,
            "CELERY_BROKER_URL": broker_url_for(embedded.url),
            "MEDIA_URL": f"oss://{bucket}/pipeline",
            "OSS_ENDPOINT": moto.spec.url,
            "OSS_ACCESS_KEY_ID": "testing",
            "OSS_ACCESS_KEY_SECRET": "testing",
            "DASHSCOPE_API_KEY": config.api_key,
            "DASHSCOPE_BASE_URL": box.api_url,
            "SUBMIT_RATES": f"paraformer={RATE:g}",
            "UPLOAD_THREADS": str(UPLOAD_THREADS),
            "LOG_FORMAT": "json",
        }
        alone = upload_alone({**env, "MEDIA_URL": f"oss://{bucket}/alone"}, work / "media")
        stack.start(worker_spec(env, concurrency=WORKER_THREADS))
        elapsed = pipeline(env, work / "media", files)
    finally:
        stack.stop_all()
        box.stop()
        embedded.close()
        shutil.rmtree(work, ignore_errors=True)
    batches = -(-files // 100)
    floor_rate = batches / RATE
    floor = max(alone, floor_rate)
    print(f"files                 {files} in {batches} batches")
    print(f"rate-limit floor      {floor_rate:8.2f} s  ({batches} batches / {RATE:g} per s)")
    print(f"upload alone          {alone:8.2f} s  ({WORKER_THREADS}x{UPLOAD_THREADS} threads)")
    print(f"upload + submission   {elapsed:8.2f} s")
    print(f"ratio to the floor    {elapsed / floor:8.2f}   (target <= 1.2)")
    return {
        "files": files,
        "rate_floor_s": floor_rate,
        "upload_alone_s": alone,
        "floor_s": floor,
        "pipeline_s": elapsed,
        "ratio": elapsed / floor,
    }


if __name__ == "__main__":
    main()
