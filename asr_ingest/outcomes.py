"""Follow the runs of ``asr-ingest run`` to the end and print one row per file.

A row's ``duration_ms`` comes from the archived result itself: Fun-ASR and Paraformer results
carry ``properties.original_duration_in_milliseconds``; Qwen filetrans results only carry
sentence timings, so their last ``end_time`` stands in (`docs/dashscope-transcription.md`,
"The transcription result file").
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from asr_ingest.submit_cmd import ProgressView, SubmitReport
from core.redis_client import connect
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
    client = connect(settings.redis_url)
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
    """``path`` relative to the working directory when below it, else ``…/<dir>/<name>``."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        parts = Path(path).parts
        return path if len(parts) <= 3 else "…/" + "/".join(parts[-2:])


def _audio(duration_ms: int | None) -> str:
    """An audio length for people: ``3.2 s``, ``12 min 5 s``; "" when unknown."""
    if duration_ms is None:
        return ""
    seconds = duration_ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


MEDIUM, WIDE = 100, 130
"""Terminal widths (columns) from which the table adds model and audio length (``MEDIUM``),
then each file's archive key or failure reason (``WIDE``)."""


def render_run_table(console: Console, rows: Sequence[Row], settings: Settings) -> None:
    """Print one line per file: file, task id (never broken), status; wider, more columns.

    Below :data:`WIDE` columns, failure reasons follow the table, one line each.
    """
    medium, wide = console.width >= MEDIUM, console.width >= WIDE
    table = Table(
        title="asr-ingest run",
        caption=f"archive: {settings.archive_urls[0]}",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("file", overflow="ellipsis", ratio=1, min_width=12)
    if medium:
        table.add_column("model", overflow="ellipsis", no_wrap=True, max_width=18)
    table.add_column("task_id", no_wrap=True, min_width=36)
    table.add_column("status", no_wrap=True)
    if medium:
        table.add_column("audio", no_wrap=True, justify="right")
    if wide:
        table.add_column("archive key / reason", overflow="fold", ratio=1)
    for row in rows:
        style = "green" if row.status in ("succeeded", "duplicate") else "red"
        cells = [_display(row.path)]
        cells += [row.model] if medium else []
        cells += [row.task_id, f"[{style}]{row.status}[/]"]
        cells += [_audio(row.duration_ms)] if medium else []
        cells += [row.archive_key or row.reason] if wide else []
        table.add_row(*cells)
    console.print(table)
    if not wide:
        for row in rows:
            if row.reason:
                console.print(f"{_display(row.path)}: {row.reason}", markup=False)
    ok = sum(row.status in ("succeeded", "duplicate") for row in rows)
    console.print(f"{ok} of {len(rows)} files archived")


def print_json_rows(rows: Sequence[Row]) -> None:
    """One JSON object per row on stdout (``docs/contract.md``, ``asr-ingest run --json``).

    Keys: ``file``, ``model``, ``task_id``, ``status``, ``duration_ms`` (audio length, ms),
    ``archive_key``, ``reason``.
    """
    for row in rows:
        document = {
            "file": row.path,
            "model": row.model,
            "task_id": row.task_id,
            "status": row.status,
            "duration_ms": row.duration_ms,
            "archive_key": row.archive_key,
            "reason": row.reason,
        }
        sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
    sys.stdout.flush()
