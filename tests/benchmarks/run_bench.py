"""Benchmark: N recordings through ``asr-ingest run`` on its own sandbox, against the rate floor.

Run by ``make bench`` (``python tests/benchmarks/run_bench.py [--files N]``). It writes N
distinct short WAV files (default 10,000) to a temporary directory and runs
``asr-ingest run DIR --json`` there as a child process, in a fresh ``ASR_INGEST_HOME`` with
``ARCHIVE_URLS`` a local directory and nothing else configured: the command starts its own
Redis, moto (OSS), sandbox (its default submit rate limits on), gunicorn webhook and Celery
worker, shares the files round-robin among its default models, and waits until every file is
settled. The sandbox runs with ``--no-ffprobe`` (probing is DashScope's work, off our machine
in production; ``--ffprobe`` keeps it).

Time: from starting the command to the last manifest written (latest ``archived_at``), split
by the manifests' ``received_at`` into: start → first event (stack start, walk, first
uploads and submit), first → last event (the submissions, which the floor bounds), last event
→ last manifest (the archive tail).

Floor: submissions are the one thing that cannot go faster. Each model family has its own
submit limit (``rps_f``: the sandbox's ``--submit-rps``, which ``SUBMIT_RATES`` matches) and
batch size (``b_f``: 1 file per task for ``qwen3-asr-flash-filetrans``, else
``SUBMIT_BATCH_SIZE`` = 100), and families are limited independently, so with ``n_f`` files
of family f::

    floor = max over f of ceil(n_f / b_f) / rps_f

For 10,000 files on the three default models (3,334 fun-asr, 3,333 paraformer-v2, 3,333 qwen):
fun-asr 34 / 10, paraformer 34 / 20, qwen 3,333 / 10 = 333.3 s. Target: time <= 1.2 x floor.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import wave
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO_ROOT))

from asr_ingest.run import DEFAULT_MODELS  # noqa: E402  # after the sys.path line above
from asr_ingest.starters import script  # noqa: E402
from core.models import family_of  # noqa: E402
from core.settings import DEFAULT_SUBMIT_RATES  # noqa: E402
from sandbox.config import DEFAULT_SUBMIT_RPS  # noqa: E402
from tests.benchmarks.common import Figure, median_of, write_figures  # noqa: E402
from worker.submission.batching import batch_size_for  # noqa: E402

CONFIGURED = (
    "REDIS_URL", "CELERY_BROKER_URL", "MEDIA_URL", "ARCHIVE_URLS", "WEBHOOK_PUBLIC_URL",
    "DASHSCOPE_API_KEY", "DASHSCOPE_BASE_URL", "OSS_ENDPOINT", "SUBMIT_RATES",
)  # fmt: skip
"""Variables that would make ``asr-ingest run`` use an outside part instead of its own."""


def write_recordings(directory: Path, count: int, seconds: float = 0.25) -> None:
    """``count`` distinct mono 8 kHz WAV files (each with its own first sample)."""
    directory.mkdir(parents=True)
    frames = int(8000 * seconds)
    for n in range(count):
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(n.to_bytes(4, "little") + b"\0\0" * (frames - 2))
        (directory / f"rec{n:05d}.wav").write_bytes(buffer.getvalue())


def floor_seconds(files: int, models: tuple[str, ...]) -> tuple[float, dict[str, float]]:
    """The rate-limit floor (module docstring) and each family's share of it, seconds."""
    client_rates = dict(
        (k, float(v)) for k, v in (item.split("=") for item in DEFAULT_SUBMIT_RATES.split(","))
    )
    shares = [
        files // len(models) + (1 if n < files % len(models) else 0) for n in range(len(models))
    ]
    per_family: dict[str, float] = {}
    for model, count in zip(models, shares, strict=True):
        family = family_of(model)
        rate = min(DEFAULT_SUBMIT_RPS[family], client_rates.get(family, math.inf))
        submits = math.ceil(count / batch_size_for(model))
        per_family[family] = per_family.get(family, 0.0) + submits / rate
    return max(per_family.values()), per_family


def manifest_times(archive: Path) -> tuple[int, float, float, float]:
    """(manifests, earliest and latest ``received_at``, latest ``archived_at``), epoch seconds."""
    count, first_in, last_in, last_out = 0, float("inf"), 0.0, 0.0
    for path in archive.glob("*/manifest.json"):
        manifest = json.loads(path.read_text())
        received, archived = epoch(manifest["received_at"]), epoch(manifest["archived_at"])
        count, last_out = count + 1, max(last_out, archived)
        first_in, last_in = min(first_in, received), max(last_in, received)
    return count, first_in, last_in, last_out


def epoch(iso: str) -> float:
    """An ISO 8601 UTC time (``Z``) as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def run_once(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """One ``asr-ingest run``; its seconds to the last manifest and what it archived."""
    media, archive, home = work / "media", work / "archive", work / "home"
    write_recordings(media, args.files)
    env = {k: v for k, v in os.environ.items() if k not in CONFIGURED}
    env.update(ASR_INGEST_HOME=str(home), ARCHIVE_URLS=archive.as_uri(), PYTHONUNBUFFERED="1")
    floor, _ = floor_seconds(args.files, DEFAULT_MODELS)
    argv = [script("asr-ingest"), "run", str(media), "--json", "--timeout", str(3 * floor + 300)]
    if not args.ffprobe:
        argv.append("--sandbox-arg=--no-ffprobe")
    started_wall, started = time.time(), time.perf_counter()
    with (work / "run.out").open("wb") as out:
        process = subprocess.Popen(argv, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=3 * floor + 420)
        except subprocess.TimeoutExpired:
            process.terminate()
            code = process.wait(30)
    command_s = time.perf_counter() - started
    manifests, first_in, last_in, latest = manifest_times(archive)
    lines = (work / "run.out").read_text(errors="replace").splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[str(row.get("status"))] = statuses.get(str(row.get("status")), 0) + 1
    if code != 0:
        print("\n".join(line for line in lines if not line.startswith("{"))[-2000:])
    result = {
        "exit_code": code,
        "to_last_manifest_s": latest - started_wall if latest else float("nan"),
        "command_s": command_s,
        "manifests": manifests,
        "start_to_first_event_s": first_in - started_wall if manifests else float("nan"),
        "first_to_last_event_s": last_in - first_in if manifests else float("nan"),
        "last_event_to_last_manifest_s": latest - last_in if manifests else float("nan"),
        "statuses": statuses,
    }
    print(
        f"asr-ingest run, {args.files} files: exit {code}; last manifest after "
        f"{result['to_last_manifest_s']:.1f} s; command {command_s:.1f} s; {manifests} manifests; "
        f"file statuses {statuses}"
    )
    print(
        f"  start -> first event {result['start_to_first_event_s']:.1f} s (stack start, upload, "
        f"first submit); first -> last event {result['first_to_last_event_s']:.1f} s (the "
        f"submissions: compare the floor); last event -> last manifest "
        f"{result['last_event_to_last_manifest_s']:.1f} s"
    )
    return result


def main() -> None:
    """Run ``--repeat`` times and write the figure: median time / floor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000, help="recordings")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the figure is the median")
    parser.add_argument("--ffprobe", action="store_true", help="let the sandbox run ffprobe")
    parser.add_argument("--json-out", help="write the figures here (JSON)")
    args = parser.parse_args()
    floor, per_family = floor_seconds(args.files, DEFAULT_MODELS)
    shares = ", ".join(f"{family} {seconds:.1f} s" for family, seconds in per_family.items())
    print(f"rate-limit floor {floor:.1f} s ({shares})")
    runs = []
    for n in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="run-bench-") as tmp:
            runs.append(run_once(args, Path(tmp) / str(n)))
    ratios = tuple(r["to_last_manifest_s"] / floor for r in runs)
    failed = [r for r in runs if r["exit_code"] != 0]
    note = (
        f"{args.files} recordings; median {median_of(r['to_last_manifest_s'] for r in runs):.1f} s"
        f" vs floor {floor:.1f} s"
    )
    if failed:
        note += f"; {len(failed)} run(s) did not exit 0"
    figure = Figure(
        "asr-ingest run vs the rate-limit floor", median_of(ratios), "x", "<=", 1.2, note, ratios
    )
    write_figures(
        args.json_out,
        "run",
        [figure],
        {"files": args.files, "floor_s": floor, "floor_by_family_s": per_family, "runs": runs},
    )


if __name__ == "__main__":
    main()
