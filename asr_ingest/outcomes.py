"""Follow the runs of ``asr-ingest run`` to the end and print one row per file.

A row's ``duration_ms`` comes from the archived result itself: Fun-ASR and Paraformer results
carry ``properties.original_duration_in_milliseconds``; Qwen filetrans results only carry
sentence timings, so their last ``end_time`` stands in (`docs/dashscope-transcription.md`,
"The transcription result file").
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from asr_ingest.submit_cmd import ProgressView, SubmitReport
from core.settings import Settings
from worker.archiving.destinations import open_destinations
from worker.submission.tracking import FileOutcome, OutcomeReader


@dataclass(frozen=True, slots=True)
class Row:
    """One file's line in the final table; ``duration_ms`` is None when unknown."""

    path: str
    model: str
    task_id: str
    status: str
    duration_ms: int | None
    archive_key: str
    reason: str


def follow_runs(
    settings: Settings,
    reports: Sequence[SubmitReport],
    console: Console,
    timeout_s: float,
    poll_s: float = 0.5,
) -> list[tuple[str, FileOutcome]]:
    """Poll every run until each file is final or ``timeout_s`` passes; (model, outcome) pairs.

    Shows a progress display of uploads, submissions and finished files meanwhile.
    """
    client = redis.Redis.from_url(settings.redis_url)
    reader = OutcomeReader(client, settings)
    accepted = sum(r.accepted for r in reports)
    view = ProgressView(console, accepted, accepted + sum(len(r.rejected) for r in reports))
    deadline = time.monotonic() + timeout_s
    try:
        with view.progress:
            while True:
                pairs = [(r.model, o) for r in reports for o in reader.run(r.run_id)]
                view.update([o for _, o in pairs])
                if all(o.final for _, o in pairs) or time.monotonic() >= deadline:
                    return pairs
                time.sleep(poll_s)
    finally:
        client.close()


def result_duration_ms(result: dict[str, Any]) -> int | None:
    """The audio duration a transcription result states, in milliseconds, or None."""
    properties = result.get("properties") or {}
    if isinstance(properties.get("original_duration_in_milliseconds"), int):
        return int(properties["original_duration_in_milliseconds"])
    ends = [
        sentence.get("end_time")
        for transcript in result.get("transcripts") or []
        for sentence in transcript.get("sentences") or []
    ]
    numbers = [end for end in ends if isinstance(end, int)]
    return max(numbers) if numbers else None


def build_rows(settings: Settings, pairs: Sequence[tuple[str, FileOutcome]]) -> list[Row]:
    """Rows for ``pairs``, reading each archived result from the first destination."""
    destination = open_destinations(settings)[0]
    rows = []
    for model, outcome in pairs:
        duration = None
        if outcome.archive_key:
            raw = destination.get_bytes(outcome.archive_key)
            duration = result_duration_ms(json.loads(raw)) if raw else None
        rows.append(
            Row(
                outcome.path,
                model,
                outcome.task_id,
                outcome.status,
                duration,
                outcome.archive_key,
                outcome.reason,
            )
        )
    return sorted(rows, key=lambda row: row.path)


def _display(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def render_run_table(
    console: Console, settings: Settings, pairs: Sequence[tuple[str, FileOutcome]]
) -> list[Row]:
    """Print the table (file, model, task, status, duration in ms, archive key); the rows."""
    rows = build_rows(settings, pairs)
    table = Table(title="asr-ingest run")
    for name in ("file", "model", "task_id", "status", "duration_ms", "archive key / reason"):
        table.add_column(name, overflow="fold")
    for row in rows:
        style = "green" if row.status == "succeeded" else "red"
        duration = "" if row.duration_ms is None else str(row.duration_ms)
        where = row.archive_key or row.reason
        table.add_row(
            _display(row.path), row.model, row.task_id, f"[{style}]{row.status}[/]", duration, where
        )
    console.print(table)
    ok = sum(row.status == "succeeded" for row in rows)
    console.print(f"{ok} of {len(rows)} files archived")
    return rows
