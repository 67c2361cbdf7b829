"""``asr-ingest submit``, ``status`` and ``resubmit``: local media in, archived results out.

The work is in plain functions that take settings and return data, so ``asr-ingest run``
reuses them: :func:`submit_paths` (walk, plan, enqueue one task per batch; or in two steps,
:func:`plan_run` and :func:`enqueue_batches`) and
:func:`wait_for` (poll each file's outcome, from the run record, the task's receipt and its
archive manifest, see :mod:`worker.submission.tracking`). Rendering (rich progress and tables) is
separate: :class:`ProgressView`, :func:`render_outcomes`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from asr_ingest.home import state_settings
from core.errors import PipelineError
from core.models import family_of
from core.queues import SUBMIT_QUEUE
from core.redis_client import connect
from core.settings import Settings, load_settings
from worker.app import create_celery
from worker.submission.batching import check_parameters, parse_parameters, plan_batches
from worker.submission.media import Rejection, walk
from worker.submission.submissions import SubmissionStore
from worker.submission.tracking import FileOutcome, OutcomeReader, resubmit_task, task_status

SUBMIT_BATCH_TASK = "asr_ingest.submit_batch"  # worker.submission.tasks.SUBMIT_BATCH_TASK


@dataclass(frozen=True)
class SubmitReport:
    """What :func:`submit_paths` did: the run id, files accepted, batches enqueued, rejections."""

    run_id: str
    model: str
    accepted: int
    batches: int
    rejected: list[Rejection]


def submit_paths(
    settings: Settings,
    paths: Sequence[str],
    model: str,
    parameters: dict[str, Any] | None = None,
    force: bool = False,
) -> SubmitReport:
    """Walk ``paths``, plan batches and enqueue one ``submit`` task per batch.

    Raises :class:`core.errors.PermanentError` (``unknown_model``) for an unknown model and
    ``ValueError`` for a parameter of the wrong type; rejected files are reported, not raised.
    """
    report = plan_run(settings, paths, model, parameters, force)
    enqueue_batches(settings, [(report.run_id, n) for n in range(report.batches)])
    return report


def plan_run(
    settings: Settings,
    paths: Sequence[str],
    model: str,
    parameters: dict[str, Any] | None = None,
    force: bool = False,
) -> SubmitReport:
    """Walk ``paths``, plan batches and store the run; nothing is enqueued yet
    (:func:`enqueue_batches`). Raises as :func:`submit_paths` does."""
    family_of(model)
    parameters = dict(parameters or {})
    check_parameters(parameters)
    accepted, rejected = walk(paths)
    batches = plan_batches(accepted, model, settings.submit_batch_size)
    client = connect(settings.redis_url)
    try:
        store = SubmissionStore(client, settings.submission_ttl_seconds)
        run_id = store.create_run(model, parameters, batches, rejected, force=force)
    finally:
        client.close()
    return SubmitReport(run_id, model, len(accepted), len(batches), rejected)


def enqueue_batches(settings: Settings, batches: Sequence[tuple[str, int]]) -> None:
    """Send one ``submit`` task per ``(run id, batch number)``, in this order."""
    app = create_celery(settings)
    try:
        for run_id, n in batches:
            app.send_task(SUBMIT_BATCH_TASK, args=[run_id, n], queue=SUBMIT_QUEUE)
    finally:
        app.close()


def wait_for(
    settings: Settings,
    run_id: str,
    timeout_s: float,
    on_progress: Callable[[list[FileOutcome]], None] | None = None,
    poll_s: float = 0.5,
) -> list[FileOutcome]:
    """Poll until every file of ``run_id`` is final or ``timeout_s`` passes; the outcomes.

    Files still unsettled at the deadline come back with status ``pending``.
    """
    client = connect(settings.redis_url)
    reader = OutcomeReader(client, settings)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            outcomes = reader.run(run_id)
            if on_progress is not None:
                on_progress(outcomes)
            if all(o.final for o in outcomes) or time.monotonic() >= deadline:
                return outcomes
            time.sleep(poll_s)
    finally:
        client.close()


def render_outcomes(console: Console, outcomes: Sequence[FileOutcome]) -> None:
    """Print one table row per file: path, status, task id, reason."""
    table = Table()
    table.add_column("file", overflow="fold")  # whole paths, even when piped
    table.add_column("status", no_wrap=True)
    table.add_column("task", no_wrap=True, min_width=36)  # an id is never broken
    table.add_column("reason", overflow="fold")
    styles = {"succeeded": "green", "duplicate": "cyan", "pending": "yellow"}
    for o in sorted(outcomes, key=lambda item: item.path):
        style = styles.get(o.status, "red")
        table.add_row(o.path, f"[{style}]{o.status}[/]", o.task_id, o.reason)
    console.print(table)


class ProgressView:
    """A rich progress display of uploads, submissions and finished files.

    Uploads and submissions count out of the ``accepted`` files; finished files (archived,
    failed or rejected) out of all ``total``.
    """

    def __init__(self, console: Console, accepted: int, total: int) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._bars = {
            "uploaded": self.progress.add_task("uploaded", total=accepted),
            "submitted": self.progress.add_task("submitted", total=accepted),
            "finished": self.progress.add_task("finished", total=total),
        }

    def update(self, outcomes: Sequence[FileOutcome]) -> None:
        """Advance the bars to the counts in ``outcomes``."""
        counts = {
            "uploaded": sum(o.uploaded for o in outcomes),
            "submitted": sum(o.submitted for o in outcomes),
            "finished": sum(o.final for o in outcomes),
        }
        for name, bar in self._bars.items():
            self.progress.update(bar, completed=counts[name])


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--model", "-m", required=True, help="DashScope model, e.g. fun-asr.")
@click.option("--param", "params", multiple=True, help="Request parameter k=v (JSON value).")
@click.option("--force", is_flag=True, help="Submit files already submitted before.")
@click.option("--wait", is_flag=True, help="Show progress until every file is archived.")
@click.option("--timeout", default=3600.0, show_default=True, help="--wait limit, seconds.")
def submit(
    paths: tuple[str, ...],
    model: str,
    params: tuple[str, ...],
    force: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Upload local media (files or directories) and submit them for transcription."""
    settings = load_settings()
    console = Console()
    try:
        report = submit_paths(settings, paths, model, parse_parameters(params), force)
    except (PipelineError, ValueError) as exc:
        _fail(str(exc))
    for rejection in report.rejected:
        console.print(f"[red]rejected[/] {rejection.path}: {rejection.reason}")
    console.print(f"run {report.run_id}: {report.accepted} files in {report.batches} batches")
    if not report.accepted:
        _fail("no file was accepted")
    if not wait:
        return
    view = ProgressView(console, report.accepted, report.accepted + len(report.rejected))
    with view.progress:
        outcomes = wait_for(settings, report.run_id, timeout, view.update)
    render_outcomes(console, outcomes)
    if any(o.status not in ("succeeded", "duplicate") for o in outcomes):
        sys.exit(1)


@click.command()
@click.argument("task_or_file")
def status(task_or_file: str) -> None:
    """Show a task we submitted (by task id, or by a local file it took)."""
    settings = state_settings()
    client = connect(settings.redis_url)
    try:
        info = task_status(client, settings, task_or_file)
    finally:
        client.close()
    if info is None:
        _fail(f"no submission known for {task_or_file}")
    console = Console()
    for name in ("task_id", "model", "state", "source", "submitted_at", "resubmit_of"):
        console.print(f"{name:>13}: {info[name]}")
    render_outcomes(console, info["files"])


@click.command()
@click.argument("task_id")
def resubmit(task_id: str) -> None:
    """Submit the FAILED files of a task once more (once per task)."""
    settings = state_settings()
    try:
        new_ids = resubmit_task(settings, task_id)
    except PipelineError as exc:
        _fail(str(exc))
    if not new_ids:
        click.echo(f"task {task_id} has no failed files")
    for new_id in new_ids:
        click.echo(f"resubmitted as {new_id}")
