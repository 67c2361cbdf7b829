"""``asr-ingest dlq list`` / ``asr-ingest dlq replay [ID ...]``: dead letters of archiving.

A dead letter is an archive task that failed for good (`docs/contract.md`, "Command line");
see :mod:`worker.archiving.dlq`. ``replay`` publishes a fresh archive message for each
(all when no ID is given), to be picked up by a running worker.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from asr_ingest.home import state_settings
from core.queues import ARCHIVE_QUEUE, ARCHIVE_TASK
from core.redis_client import connect
from worker.app import create_celery
from worker.archiving.dlq import DeadLetters, replay


@click.group()
def dlq() -> None:
    """Dead letters: archive tasks that failed for good."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_command(as_json: bool) -> None:
    """List dead letters, oldest first."""
    settings = state_settings()
    letters = DeadLetters(connect(settings.redis_url)).list()
    if as_json:
        for letter in letters:
            click.echo(json.dumps(asdict(letter)))
        return
    table = Table("task_id", "reason", "attempts", "failed at (UTC)", "last error")
    for letter in letters:
        failed_at = datetime.fromtimestamp(letter.failed_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            letter.task_id, letter.reason, str(letter.attempts), failed_at, letter.last_error[:80]
        )
    Console().print(table)
    click.echo(f"{len(letters)} dead letter(s)")


@dlq.command("replay")
@click.argument("task_ids", nargs=-1)
def replay_command(task_ids: tuple[str, ...]) -> None:
    """Re-enqueue the given dead letters (all when none is given); exit 1 if one is unknown."""
    settings = state_settings()
    app = create_celery(settings)

    def send(task_id: str) -> None:
        app.send_task(ARCHIVE_TASK, args=[task_id], kwargs={"replay": True}, queue=ARCHIVE_QUEUE)

    client = connect(settings.redis_url)
    done, missing = replay(client, list(task_ids) or None, send, settings.dedupe_ttl_seconds)
    for task_id in done:
        click.echo(f"replayed {task_id}")
    for task_id in missing:
        click.echo(f"no dead letter or stored event for {task_id}", err=True)
    if missing:
        raise SystemExit(1)
