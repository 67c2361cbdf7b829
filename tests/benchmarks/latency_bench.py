"""Benchmark: callback → manifest latency through the sandbox, a real webhook and a real worker.

Run by ``make bench`` (``python tests/benchmarks/latency_bench.py [--tasks N] [--rate R]``).
It starts an embedded Redis, a static HTTP server with one short WAV file, the sandbox in this
process (:class:`sandbox.server.Sandbox`; callbacks signed v2 to the webhook; ``ffprobe`` off:
probing is DashScope's work, not ours, and would take the CPUs the measured parts need),
gunicorn with the Procfile's ``web`` settings, and a Celery worker with the Procfile's
``worker`` command (its pool and concurrency; queues ``archive,submit``) archiving to a local
directory. Then ``--tasks`` one-file Paraformer tasks (default 1,000) are submitted to the
sandbox at ``--rate`` per second (default 50), so their completion events arrive at that rate.

Latency of a task: from the event's arrival at the webhook (``received_at`` of its receipt,
``asr:receipt:<task_id>``) to its manifest (``archived_at`` in ``<task_id>/manifest.json``).
Target: p99 < 2 s. Also printed: p50, max, and how far the submissions kept the pace.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tempfile
import time
import wave
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402  # after the sys.path line above
import redis  # noqa: E402
import structlog  # noqa: E402

from asr_ingest.embedded import EmbeddedRedis  # noqa: E402
from asr_ingest.stack import ChildSpec, Stack  # noqa: E402
from asr_ingest.starters import celery_probe, free_port, http_probe, script  # noqa: E402
from core.settings import broker_url_for  # noqa: E402
from sandbox.config import SandboxConfig  # noqa: E402
from sandbox.server import Sandbox  # noqa: E402
from tests.benchmarks.common import (  # noqa: E402
    Figure,
    WebCommand,
    median_of,
    percentile,
    procfile_argv,
    tree_cpu_seconds,
    write_figures,
)

MODEL = "paraformer-v2"
TARGET_PATH = "/callbacks/eventbridge"


def write_wav(path: Path, seconds: float = 1.0, rate: int = 16_000) -> None:
    """A mono 16-bit PCM WAV of silence."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(seconds * rate))
    path.write_bytes(buffer.getvalue())


def worker_child(env: dict[str, str], node: str) -> ChildSpec:
    """The Procfile's ``worker`` command with a node name of its own."""
    argv = procfile_argv("worker")
    argv = [script(argv[0]), *argv[1:], "--hostname", node, "--without-gossip", "--without-mingle"]
    probe = celery_probe(env["CELERY_BROKER_URL"], node)
    return ChildSpec("worker", argv, env=env, probe=probe, cwd=REPO_ROOT, ready_timeout_s=90)


def submit_paced(api_url: str, api_key: str, media_url: str, tasks: int, rate: float) -> float:
    """Submit ``tasks`` one-file tasks at ``rate``/s; returns the worst lag behind schedule (s)."""
    headers = {"Authorization": f"Bearer {api_key}", "X-DashScope-Async": "enable"}
    body = {"model": MODEL, "input": {"file_urls": [media_url]}, "parameters": {}}
    lag = 0.0
    with httpx.Client(timeout=10, trust_env=False) as client:
        base = time.perf_counter()
        for n in range(tasks):
            scheduled = base + n / rate
            while (now := time.perf_counter()) < scheduled:
                time.sleep(min(scheduled - now, 0.005))
            lag = max(lag, time.perf_counter() - scheduled)
            answer = client.post(
                f"{api_url}/services/audio/asr/transcription", json=body, headers=headers
            )
            if answer.status_code != 200:
                raise RuntimeError(f"submit {n}: {answer.status_code} {answer.text[:200]}")
    return lag


def wait_manifests(archive: Path, task_ids: list[str], timeout_s: float) -> list[str]:
    """Wait until every task's manifest exists or ``timeout_s`` passes; the ids still missing."""
    deadline = time.monotonic() + timeout_s
    missing = list(task_ids)
    while missing and time.monotonic() < deadline:
        missing = [t for t in missing if not (archive / t / "manifest.json").exists()]
        time.sleep(0.25)
    return missing


def latencies(client: redis.Redis, archive: Path, task_ids: list[str]) -> list[float]:
    """Seconds from ``received_at`` of each receipt to ``archived_at`` of its manifest."""
    out = []
    for task_id in task_ids:
        path = archive / task_id / "manifest.json"
        received = client.hget(f"asr:receipt:{task_id}", "received_at")
        if received is None or not path.exists():
            continue
        manifest = json.loads(path.read_text())
        archived = datetime.fromisoformat(manifest["archived_at"].replace("Z", "+00:00"))
        out.append(archived.timestamp() - float(received))
    return out


def redis_cpu(client: redis.Redis) -> float:
    """Redis server CPU seconds so far (``INFO cpu``)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_once(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """One measurement with fresh servers; p50, p99, max (s), completeness, submit lag."""
    (work / "redis").mkdir(parents=True)
    (work / "www").mkdir()
    (work / "prometheus").mkdir()
    write_wav(work / "www" / "clip.wav")
    archive = work / "archive"
    with (
        EmbeddedRedis(work / "redis") as embedded,
        Stack(sink=lambda _line: None, handle_signals=False, log_dir=work / "logs") as stack,
    ):
        static_port, web_port = free_port(), free_port()
        media = f"http://127.0.0.1:{static_port}"
        stack.start(
            ChildSpec(
                "media",
                [sys.executable, "-m", "http.server", str(static_port), "--bind", "127.0.0.1"],
                cwd=work / "www",
                probe=http_probe(media + "/"),
            )
        )
        callback = f"http://127.0.0.1:{web_port}{TARGET_PATH}"
        config = SandboxConfig(
            callback_url=callback,
            submit_rps={"paraformer": max(100.0, 2 * args.rate)},
            use_ffprobe=False,
        )
        with Sandbox(config) as box:
            env = {
                **box.env,
                "REDIS_URL": embedded.url,
                "CELERY_BROKER_URL": broker_url_for(embedded.url),
                "WEBHOOK_PUBLIC_URL": callback,
                "ARCHIVE_URLS": archive.as_uri(),
                "PROMETHEUS_MULTIPROC_DIR": str(work / "prometheus"),
                "LOG_FORMAT": "json",
                "PYTHONPATH": str(REPO_ROOT),
            }
            command = WebCommand.from_procfile()
            web_argv = command.argv(script("gunicorn"), "webhook.wsgi:app", web_port)
            stack.start(
                ChildSpec(
                    "web",
                    web_argv,
                    env=env,
                    cwd=REPO_ROOT,
                    probe=http_probe(f"http://127.0.0.1:{web_port}/readyz", status=200),
                )
            )
            worker = stack.start(worker_child(env, f"latency-{web_port}@bench"))
            client = redis.Redis.from_url(embedded.url)
            pids = {"web": stack["web"].pid, "worker": worker.pid}
            cpu_before = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
            redis_before, own_before = redis_cpu(client), time.process_time()
            started = time.perf_counter()
            lag = submit_paced(box.api_url, box.api_key, f"{media}/clip.wav", args.tasks, args.rate)
            task_ids = [s["task_id"] for s in box.state()["submissions"] if s.get("task_id")]
            missing = wait_manifests(archive, task_ids, args.tasks / args.rate + args.drain_seconds)
            took = time.perf_counter() - started
            cpu = {name: tree_cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
            cpu["redis"] = redis_cpu(client) - redis_before
            cpu["sandbox"] = time.process_time() - own_before  # and the submitter: this process
            values = latencies(client, archive, task_ids)
            client.close()
    result = {
        "tasks": len(task_ids),
        "archived": len(task_ids) - len(missing),
        "p50_s": percentile(values, 50),
        "p99_s": percentile(values, 99),
        "max_s": max(values, default=float("nan")),
        "submit_lag_s": lag,
        "first_decile_p50_s": percentile(values[: len(values) // 10], 50),
        "last_decile_p50_s": percentile(values[-(len(values) // 10) :], 50),
        **{
            f"cpu_ms_per_task_{name}": seconds * 1000 / max(1, len(task_ids))
            for name, seconds in cpu.items()
        },
        "wall_s": took,
        "web": command.describe(),
        "worker": " ".join(procfile_argv("worker")[1:]),
    }
    print(
        f"{result['archived']}/{result['tasks']} archived in {took:.1f} s; receipt -> manifest "
        f"p50 {result['p50_s'] * 1000:.0f} ms, p99 {result['p99_s'] * 1000:.0f} ms, max "
        f"{result['max_s'] * 1000:.0f} ms; submissions at most {lag * 1000:.0f} ms behind pace"
    )
    growing = result["last_decile_p50_s"] > max(0.1, 2 * result["first_decile_p50_s"])
    backlog = " (growing: a backlog, the pace is above what the parts sustain)" if growing else ""
    print(
        f"p50 of the first tenth {result['first_decile_p50_s'] * 1000:.0f} ms, of the last tenth "
        f"{result['last_decile_p50_s'] * 1000:.0f} ms{backlog}; "
        "CPU ms per task: "
        + ", ".join(
            f"{n} {result[f'cpu_ms_per_task_{n}']:.1f}"
            for n in ("web", "worker", "redis", "sandbox")
        )
    )
    return result


def main() -> None:
    """Run ``--repeat`` measurements and write the figure (median p99)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="one-file tasks")
    parser.add_argument("--rate", type=float, default=50.0, help="tasks (events) per second")
    parser.add_argument("--drain-seconds", type=float, default=60.0, help="wait after the last")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the figure is the median")
    parser.add_argument("--json-out", help="write the figures here (JSON)")
    args = parser.parse_args()
    quiet = structlog.make_filtering_bound_logger(logging.WARNING)
    structlog.configure(wrapper_class=quiet)  # the in-process sandbox logs every push
    runs = []
    for n in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="latency-bench-") as tmp:
            runs.append(run_once(args, Path(tmp) / str(n)))
    p99s = tuple(r["p99_s"] for r in runs)
    incomplete = sum(r["tasks"] - r["archived"] for r in runs)
    note = f"{args.tasks} tasks at {args.rate:g}/s; p50 {median_of(r['p50_s'] for r in runs):.3f} s"
    if incomplete:
        note += f"; {incomplete} manifests missing at the deadline"
    figure = Figure("callback -> manifest p99", median_of(p99s), "s", "<", 2.0, note, p99s)
    write_figures(args.json_out, "latency", [figure], {"runs": runs})


if __name__ == "__main__":
    main()
