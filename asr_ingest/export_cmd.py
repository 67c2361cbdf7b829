"""``asr-ingest export`` and ``asr-ingest show``: readable transcripts from the archive.

A target is a local media path (a file, or a directory of them) that asr-ingest submitted, or
a ``task_id``. Paths are resolved to their task and result through the submission records
(Redis: configured, or the local state of ``asr-ingest run``, see :mod:`asr_ingest.home`);
results are read from the first ``ARCHIVE_URLS`` destination. Output files are named after the
media file (``meeting.srt``), or ``<task_id>-<nnnn>.<ext>`` for tasks submitted elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import click

from asr_ingest.home import state_settings
from asr_ingest.transcripts import FORMATS, Format, render
from core.redis_client import connect
from core.settings import Settings
from worker.archiving import manifest as mf
from worker.archiving.destinations import Destination, open_destinations
from worker.submission.submissions import SubmissionStore
from worker.submission.tracking import manifest_results


@dataclass(frozen=True, slots=True)
class Transcript:
    """One archived result: ``name`` for its output file (no extension), its ``key``."""

    name: str
    key: str


class Resolver:
    """Find archived results for targets (paths or task ids)."""

    def __init__(self, settings: Settings) -> None:
        self.destination: Destination = open_destinations(settings)[0]
        client = connect(settings.redis_url)
        self.submissions = SubmissionStore(client, settings.submission_ttl_seconds)

    def manifest(self, task_id: str) -> mf.Manifest | None:
        """The manifest of ``task_id``, or None when it is not archived."""
        raw = self.destination.get_bytes(mf.manifest_key(task_id))
        return mf.decode(raw) if raw else None

    def resolve(self, target: str) -> Iterator[Transcript]:
        """The transcripts ``target`` names; raises :class:`click.ClickException` when none."""
        path = Path(target)
        if path.exists():
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            found = [t for f in files if (t := self._for_file(f)) is not None]
        else:
            found = list(self._for_task(target))
        if not found:
            raise click.ClickException(f"no archived transcript for {target}")
        yield from found

    def _for_file(self, path: Path) -> Transcript | None:
        absolute = str(path.resolve())
        task_id = self.submissions.task_for_file(absolute)
        sub = self.submissions.load(task_id) if task_id else None
        manifest = self.manifest(task_id) if task_id else None
        if sub is None or manifest is None:
            return None
        results = manifest_results(manifest, sub)
        for entry in sub.files:
            if entry.path == absolute and results.get(entry.key, (False, "", ""))[2]:
                return Transcript(path.stem, results[entry.key][2])
        return None

    def _for_task(self, task_id: str) -> Iterator[Transcript]:
        manifest = self.manifest(task_id)
        if manifest is None:
            return
        sub = self.submissions.load(task_id)
        names = {e.key: Path(e.path).stem for e in sub.files} if sub else {}
        keys = manifest_results(manifest, sub) if sub else {}
        by_archive_key = {archive_key: names[key] for key, (_, _, archive_key) in keys.items()}
        for entry in mf.file_entries(manifest):
            if mf.entry_archived(entry):
                key = str(entry["key"])
                default = f"{task_id}-{int(entry.get('index') or 0):04d}"
                yield Transcript(by_archive_key.get(key, default), key)

    def text(self, transcript: Transcript, fmt: Format) -> str:
        """The transcript rendered in ``fmt``."""
        raw = self.destination.get_bytes(transcript.key)
        if raw is None:
            raise click.ClickException(f"{transcript.key} is missing from the archive")
        return render(cast("dict[str, object]", json.loads(raw)), fmt)


@click.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="txt", show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for the transcripts (created).",
)
def export(targets: tuple[str, ...], fmt: Format, out: Path) -> None:
    """Write one transcript file per media file of PATH or TASK_ID ... into --out."""
    resolver = Resolver(state_settings())
    out.mkdir(parents=True, exist_ok=True)
    for target in targets:
        for transcript in resolver.resolve(target):
            destination = out / f"{transcript.name}.{fmt}"
            destination.write_text(resolver.text(transcript, fmt), encoding="utf-8")
            click.echo(str(destination))


@click.command()
@click.argument("target")
def show(target: str) -> None:
    """Print the transcript text of one media file or task."""
    resolver = Resolver(state_settings())
    for transcript in resolver.resolve(target):
        click.echo(resolver.text(transcript, "txt"), nl=False)
