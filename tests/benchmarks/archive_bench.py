"""Benchmark: archive throughput against a raw download+PUT loop, and memory on one big result.

Run by ``make bench`` (``python tests/benchmarks/archive_bench.py``); standalone, no pytest.
Result files are served by a static HTTP server process; archives go to moto S3 (a
``moto_server`` process); Redis is embedded. The worker is a real Celery worker with the
Procfile's ``worker`` pool and concurrency (``--pool``/``--concurrency`` override).

Throughput, for two result sizes: **small** (``--files`` files of about 47 KB, the size of a
typical Paraformer result) and **large** (``--large-files`` files of ``--large-mb`` MB), archived
as ``--tasks`` and ``--large-tasks`` tasks (at least ``ARCHIVE_FILE_CONCURRENCY`` files each,
so the worker's files in flight match the loop's threads). Baseline in the same run: a raw
loop in this process that downloads each file with httpx and PUTs it with boto3, on as many
threads as the worker can have files in flight (pool concurrency x
``ARCHIVE_FILE_CONCURRENCY``). Both start warm. Each of ``--repeat`` rounds runs the raw
loop and the worker, in turns (odd rounds the raw loop first, even rounds the worker), each on
an empty bucket; the worker phase's end is polled every 10 ms; figures are medians of the
rounds. Target: worker files/s >= 0.85 x raw loop.

What the worker does per file beyond the loop is counted, not guessed: Redis commands from an
``INFO commandstats`` delta over the worker phase (minus the commands this script sends: one
intake script per task, as the webhook's, and its polling), and the worker's CPU seconds.

Memory: one result of ``--big-mb`` MB (default 256; ``--large`` for the issue's 1024) archived
by the worker to a local directory and to moto S3 (multipart); peak RSS growth of the worker's
processes (``VmHWM``; target < 64 MB) and MB/s. ``--big-mb 0`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402  # after the path set-up above
import httpx  # noqa: E402
import redis  # noqa: E402

from asr_ingest.embedded import EmbeddedRedis  # noqa: E402
from asr_ingest.stack import ChildSpec, Stack  # noqa: E402
from asr_ingest.starters import free_port, http_probe, moto_spec  # noqa: E402
from core.broker import publisher  # noqa: E402
from core.settings import load_settings  # noqa: E402
from core.store import ReceiptStore  # noqa: E402
from tests.benchmarks.common import (  # noqa: E402
    Figure,
    WorkerCommand,
    median_of,
    process_tree,
    tree_cpu_seconds,
    write_figures,
)
from tests.fixtures.worker import CELERY, WorkerProcess, broker_url_for  # noqa: E402
from tests.support import task_events as te  # noqa: E402
from webhook.messages import ArchiveMessages  # noqa: E402

AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
FILE_CONCURRENCY = 4  # ARCHIVE_FILE_CONCURRENCY's default (core/settings.py)
POLL_SECONDS = 0.01
"""How often the worker phase checks for its end: the large phase lasts about a second, so a
0.1 s poll alone would add up to 10 % to it (the raw loop's end is exact)."""


def write_small(directory: Path, count: int) -> int:
    """``count`` result files of about 47 KB under ``directory``; their total bytes."""
    directory.mkdir(parents=True)
    total = 0
    for i in range(count):
        body = te.result_file(f"{i}.wav", words=565)
        (directory / f"{i:04d}.json").write_bytes(body)
        total += len(body)
    return total


def write_big(path: Path, megabytes: float) -> int:
    """One valid JSON result of about ``megabytes`` MB; its size in bytes."""
    word = b'{"begin_time": 100, "end_time": 200, "text": "hello ", "punctuation": ""},'
    block = word * (1024 * 1024 // len(word))
    with path.open("wb") as out:
        out.write(b'{"file_url": "https://media.example/big.wav", "words": [')
        for _ in range(int(megabytes)):
            out.write(block)
        out.write(word * int((megabytes % 1) * len(block) / len(word)))
        out.write(b'{"text": "end"}]}')
    return path.stat().st_size


def write_large(directory: Path, count: int, megabytes: float) -> int:
    """``count`` distinct results of ``megabytes`` MB (hard links of one file); total bytes."""
    directory.mkdir(parents=True)
    size = write_big(directory / "0000.json", megabytes)
    for i in range(1, count):
        os.link(directory / "0000.json", directory / f"{i:04d}.json")
    return size * count


@dataclass(frozen=True)
class Corpus:
    """One size class: ``count`` files under ``<base>/<name>/``, ``total`` bytes."""

    name: str
    count: int
    total: int

    def urls(self, base: str) -> list[str]:
        """The files' URLs."""
        return [f"{base}/{self.name}/{i:04d}.json" for i in range(self.count)]


def raw_loop(urls: list[str], s3: Any, bucket: str, prefix: str, threads: int) -> float:
    """Download and PUT every URL on ``threads`` threads (clients warm); seconds taken."""
    client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=threads))
    client.get(urls[0])
    s3.put_object(Bucket=bucket, Key=f"{prefix}/warm", Body=b"x")

    def one(n: int) -> None:
        body = client.get(urls[n]).content
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{n:04d}.json", Body=body)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(len(urls))))
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


class Feeder:
    """Stores receipts and pushes archive messages as the webhook does (one intake script per
    task), then polls the receipts' states; counts the Redis commands it sends."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.store = ReceiptStore(self.client, 3600)
        self.messages = ArchiveMessages(publisher(load_settings(redis_url=redis_url)))
        self.sent: Counter[str] = Counter()

    def enqueue(self, tasks: dict[str, list[str]], model: str = "fun-asr") -> None:
        """Claim and enqueue each task (results = its URLs) in one script each."""
        for task_id, urls in tasks.items():
            output = te.batch_output(task_id, [te.ok(u) for u in urls])
            body = te.event(task_id, model, output)
            self.store.claim_enqueued(
                task_id,
                body,
                queue_key=self.messages.queue_key,
                message=self.messages.render(task_id),
            )
        for name in ("evalsha", "exists", "hset", "expire", "lpush"):
            self.sent[name] += len(tasks)

    def wait_archived(self, task_ids: list[str], timeout_s: float = 900) -> None:
        """Block until every receipt is ``archived`` (polls every :data:`POLL_SECONDS`); raises
        on ``dead``."""
        deadline = time.monotonic() + timeout_s
        pending = list(task_ids)
        while time.monotonic() < deadline:
            pipe = self.client.pipeline(transaction=False)
            for task_id in pending:
                pipe.hget(ReceiptStore.key(task_id), "state")
            states = pipe.execute()
            self.sent["hget"] += len(pending)
            if b"dead" in states:
                raise RuntimeError("a task was dead-lettered")
            pending = [t for t, s in zip(pending, states, strict=True) if s != b"archived"]
            if not pending:
                return
            time.sleep(POLL_SECONDS)
        raise RuntimeError(f"archiving did not finish: {len(pending)} tasks left")

    def commandstats(self) -> Counter[str]:
        """Calls per command so far (``INFO commandstats``); counts the INFO call itself."""
        stats = self.client.info("commandstats")
        self.sent["info"] += 1
        return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


def start_worker(
    redis_url: str, env: dict[str, str], log: Path, command: WorkerCommand
) -> WorkerProcess:
    """A real worker on the archive queue with the Procfile's pool and concurrency."""
    full = {**os.environ, **AWS, **env, "REDIS_URL": redis_url, "LOG_FORMAT": "json"}
    full["CELERY_BROKER_URL"] = broker_url_for(redis_url)
    args = [CELERY, "-A", "worker.celery_app", "worker", "-Q", "archive"]
    args += ["--pool", command.pool, "--concurrency", str(command.concurrency)]
    args += ["--loglevel", "INFO", "--hostname", f"bench-{uuid.uuid4().hex[:6]}@%h"]
    return WorkerProcess(args, full, log, "bench").wait_ready(90)


def peak_rss_kb(pid: int) -> int:
    """``VmHWM`` (peak resident set) of process ``pid``, in kB (0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Phase:
    """One round of one size class: raw and worker seconds, worker CPU and Redis commands."""

    corpus: str
    files: int
    megabytes: float
    raw_s: float
    worker_s: float
    worker_cpu_s: float
    redis_commands: dict[str, int]
    raw_cpu_s: float = 0.0

    @property
    def ratio(self) -> float:
        """Worker files/s over raw-loop files/s."""
        return self.raw_s / self.worker_s


def raw_phase(s3: Any, corpus: Corpus, base: str, threads: int) -> tuple[float, float]:
    """Copy ``corpus`` with the raw loop: seconds, CPU seconds of this process; then empty the
    bucket, so that the next phase starts from the same moto state."""
    cpu = time.process_time()
    seconds = raw_loop(corpus.urls(base), s3, "bench", f"raw-{uuid.uuid4().hex[:6]}", threads)
    cpu = time.process_time() - cpu
    empty_bucket(s3, "bench")
    return seconds, cpu


def worker_phase(
    feeder: Feeder, proc: WorkerProcess, corpus: Corpus, base: str, tasks: int
) -> tuple[float, float, dict[str, int]]:
    """Archive ``corpus`` as ``tasks`` tasks: seconds, worker CPU s, Redis commands (worker's)."""
    urls = corpus.urls(base)
    per_task = -(-len(urls) // tasks)
    run = uuid.uuid4().hex[:6]
    work = {
        f"{corpus.name}-{run}-{n:03d}": urls[n * per_task : (n + 1) * per_task]
        for n in range(tasks)
        if urls[n * per_task : (n + 1) * per_task]
    }
    feeder.sent.clear()
    before, cpu_before = feeder.commandstats(), tree_cpu_seconds(proc.process.pid)
    started = time.perf_counter()
    feeder.enqueue(work)
    feeder.wait_archived(list(work))
    elapsed = time.perf_counter() - started
    cpu = tree_cpu_seconds(proc.process.pid) - cpu_before
    delta = feeder.commandstats() - before - feeder.sent
    return elapsed, cpu, dict(delta)


def throughput(
    args: argparse.Namespace, work: Path, redis_url: str, base: str, moto: str
) -> list[Phase]:
    """The small and large runs, ``args.repeat`` rounds each; the phases measured."""
    command = WorkerCommand(args.pool, args.concurrency)
    threads = command.concurrency * FILE_CONCURRENCY
    s3 = boto3.client("s3", endpoint_url=moto)
    corpora = [
        Corpus("small", args.files, write_small(work / "www" / "small", args.files)),
        Corpus(
            "large",
            args.large_files,
            write_large(work / "www" / "large", args.large_files, args.large_mb),
        ),
    ]
    env = {
        "ARCHIVE_URLS": "s3://bench/arch",
        "S3_ENDPOINT_URL": moto,
        "RESULT_URL_REGEX": r"http://127\.0\.0\.1:\d+/[^#\s]*",
        "ARCHIVE_SPOOL_DIR": str(work),
        "ARCHIVE_FILE_CONCURRENCY": str(FILE_CONCURRENCY),
    }
    s3.create_bucket(Bucket="bench")
    feeder = Feeder(redis_url)
    proc = start_worker(redis_url, env, work / "worker.log", command)
    phases = []
    try:
        warm = {f"warm-{n}": corpora[0].urls(base)[:1] for n in range(2 * command.concurrency)}
        feeder.enqueue(warm)  # every pool process builds its clients
        feeder.wait_archived(list(warm))
        for round_ in range(args.repeat):
            for corpus in corpora:
                tasks = args.tasks if corpus.name == "small" else args.large_tasks
                # the order alternates by round: neither side always goes second
                if round_ % 2 == 0:
                    raw_s, raw_cpu = raw_phase(s3, corpus, base, threads)
                    worker_s, cpu, commands = worker_phase(feeder, proc, corpus, base, tasks)
                else:
                    worker_s, cpu, commands = worker_phase(feeder, proc, corpus, base, tasks)
                    raw_s, raw_cpu = raw_phase(s3, corpus, base, threads)
                empty_bucket(s3, "bench")
                size = corpus.total / 1e6
                phases.append(
                    Phase(corpus.name, corpus.count, size, raw_s, worker_s, cpu, commands, raw_cpu)
                )
                print_phase(phases[-1], command, threads)
    except RuntimeError:
        print(proc.log()[-3000:])
        raise
    finally:
        proc.stop()
    return phases


def empty_bucket(s3: Any, bucket: str) -> None:
    """Delete every object of ``bucket`` (moto keeps them in memory)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        for start in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[start : start + 1000]})


def print_phase(phase: Phase, command: WorkerCommand, threads: int) -> None:
    """One line per phase, then the worker's Redis commands per file."""
    mb = phase.megabytes
    print(
        f"{phase.corpus:5} {phase.files} files {mb:.1f} MB | raw loop ({threads} threads) "
        f"{phase.files / phase.raw_s:7.1f} files/s {mb / phase.raw_s:6.1f} MB/s | worker "
        f"({command.pool} x{command.concurrency}) {phase.files / phase.worker_s:7.1f} files/s "
        f"{mb / phase.worker_s:6.1f} MB/s | ratio {phase.ratio:.2f} | CPU per file: worker "
        f"{phase.worker_cpu_s / phase.files * 1000:.1f} ms, raw loop "
        f"{phase.raw_cpu_s / phase.files * 1000:.1f} ms"
    )
    top = sorted(phase.redis_commands.items(), key=lambda kv: -kv[1])
    total = sum(phase.redis_commands.values())
    listed = ", ".join(f"{name} {calls / phase.files:.2f}" for name, calls in top[:12] if calls > 0)
    print(f"      Redis commands per file: {total / phase.files:.1f} ({listed})")


def big(
    args: argparse.Namespace, work: Path, redis_url: str, base: str, moto: str
) -> dict[str, float]:
    """One ``args.big_mb`` MB result through the worker: peak RSS growth (MB) and MB/s."""
    command = WorkerCommand(args.pool, args.concurrency)
    (work / "www" / "big").mkdir(parents=True, exist_ok=True)
    size = write_big(work / "www" / "big" / "big.json", args.big_mb)
    env = {
        "ARCHIVE_URLS": f"{(work / 'archive').as_uri()},s3://bench/big",
        "S3_ENDPOINT_URL": moto,
        "RESULT_URL_REGEX": r"http://127\.0\.0\.1:\d+/[^#\s]*",
        "ARCHIVE_SPOOL_DIR": str(work),
    }
    boto3.client("s3", endpoint_url=moto).create_bucket(Bucket="bench")
    feeder = Feeder(redis_url)
    proc = start_worker(redis_url, env, work / "worker-big.log", command)
    try:
        warm = {f"bigwarm-{n}": [f"{base}/small/0000.json"] for n in range(2 * command.concurrency)}
        feeder.enqueue(warm)
        feeder.wait_archived(list(warm))
        pids = process_tree(proc.process.pid)
        before = {pid: peak_rss_kb(pid) for pid in pids}
        started = time.perf_counter()
        feeder.enqueue({"big": [f"{base}/big/big.json"]})
        feeder.wait_archived(["big"], timeout_s=1800)
        took = time.perf_counter() - started
        growth_mb = max(peak_rss_kb(pid) - before[pid] for pid in pids) / 1024
    finally:
        proc.stop()
    manifest = json.loads((work / "archive/big/manifest.json").read_text())
    assert manifest["files"][0]["bytes"] == size
    rate = size / 1e6 / took
    print(f"big: one {size / 1e6:.0f} MB result -> local directory + moto S3 (multipart)")
    print(f"  worker {rate:7.1f} MB/s, peak RSS growth {growth_mb:.1f} MB (target < 64 MB)")
    return {"megabytes": size / 1e6, "rss_growth_mb": growth_mb, "mb_per_s": rate}


def parse_args() -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    procfile = WorkerCommand.from_procfile()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=600, help="small result files")
    parser.add_argument("--large-files", type=int, default=24, help="large result files")
    parser.add_argument("--large-mb", type=float, default=4.0, help="size of a large result")
    parser.add_argument("--tasks", type=int, default=12, help="tasks of small results")
    parser.add_argument(
        "--large-tasks",
        type=int,
        default=None,
        help="tasks of large results (default: one per ARCHIVE_FILE_CONCURRENCY files, so "
        "the worker has as many files in flight as the raw loop has threads)",
    )
    parser.add_argument("--pool", default=procfile.pool, help="worker pool (Procfile's)")
    parser.add_argument("--concurrency", type=int, default=procfile.concurrency)
    parser.add_argument("--big-mb", type=float, default=256, help="memory run size, 0: skip")
    parser.add_argument("--large", action="store_true", help="memory run at 1024 MB (the issue)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; figures are medians")
    parser.add_argument("--json-out", help="write the figures here (JSON)")
    args = parser.parse_args()
    if args.large:
        args.big_mb = 1024
    if args.large_tasks is None:
        args.large_tasks = max(1, args.large_files // FILE_CONCURRENCY)
    return args


def main() -> None:
    """Run the throughput rounds and the memory run; print and write the figures."""
    args = parse_args()
    os.environ.update(AWS)
    with (
        tempfile.TemporaryDirectory(prefix="archive-bench-") as tmp,
        EmbeddedRedis() as redis_server,
        Stack(sink=lambda _line: None, handle_signals=False) as stack,
    ):
        work = Path(tmp)
        (work / "www").mkdir()
        static_port = free_port()
        base = f"http://127.0.0.1:{static_port}"
        stack.start(
            ChildSpec(
                "static",
                [sys.executable, "-m", "http.server", str(static_port), "--bind", "127.0.0.1"],
                cwd=work / "www",
                probe=http_probe(base + "/"),
            )
        )
        moto = stack.start(moto_spec(free_port())).spec.url or ""
        phases = throughput(args, work, redis_server.url, base, moto)
        memory = big(args, work, redis_server.url, base, moto) if args.big_mb else None
    report(args, phases, memory)


def report(args: argparse.Namespace, phases: list[Phase], memory: dict[str, float] | None) -> None:
    """The figures (medians over rounds) and the per-file Redis commands."""
    figures = []
    for corpus in ("small", "large"):
        mine = [p for p in phases if p.corpus == corpus]
        ratios = tuple(p.ratio for p in mine)
        first = mine[0]
        figures.append(
            Figure(
                f"archive files/s vs raw loop, {corpus} results",
                median_of(ratios),
                "x",
                ">=",
                0.85,
                f"{first.files} files of {first.megabytes / first.files * 1000:.0f} KB; worker "
                f"{median_of(p.files / p.worker_s for p in mine):.1f} files/s, raw "
                f"{median_of(p.files / p.raw_s for p in mine):.1f} files/s",
                ratios,
            )
        )
    if memory:
        figures.append(
            Figure(
                "peak RSS growth archiving one big result",
                memory["rss_growth_mb"],
                "MB",
                "<",
                64,
                f"{memory['megabytes']:.0f} MB result"
                + ("" if memory["megabytes"] >= 1000 else " (not 1 GB: run with --large)"),
            )
        )
    details = {
        "pool": args.pool,
        "concurrency": args.concurrency,
        "raw_threads": args.concurrency * FILE_CONCURRENCY,
        "phases": [
            {**p.__dict__, "ratio": p.ratio, "redis_commands_per_file": per_file(p)} for p in phases
        ],
        "memory": memory,
    }
    write_figures(args.json_out, "archive", figures, details)


def per_file(phase: Phase) -> dict[str, float]:
    """Redis calls per file by command, most frequent first."""
    ordered = sorted(phase.redis_commands.items(), key=lambda kv: -kv[1])
    return {name: round(calls / phase.files, 3) for name, calls in ordered if calls > 0}


if __name__ == "__main__":
    main()
