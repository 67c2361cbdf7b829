"""The ``asr-ingest`` command (console script). Subcommands load lazily from their modules.

Commands and their modules (the contract's "Command line" table):

=============  ==========================================
``run``        :mod:`asr_ingest.run`: everything at once, for a laptop
``submit``     :mod:`asr_ingest.submit_cmd`: upload and submit local media
``status``     :mod:`asr_ingest.submit_cmd`: state of one task or file
``resubmit``   :mod:`asr_ingest.submit_cmd`: resubmit a task's failed files once
``dlq``        :mod:`asr_ingest.dlq_cmd`: list and replay dead letters
``export``     :mod:`asr_ingest.export_cmd`: transcripts as txt, srt, vtt or jsonl files
``show``       :mod:`asr_ingest.export_cmd`: the transcript text of one file or task
``sandbox``    :mod:`sandbox.cli`: the DashScope + EventBridge stand-in
``health``     :mod:`asr_ingest.health_cmd`: does a worker still consume tasks (liveness)
=============  ==========================================
"""

from __future__ import annotations

import importlib
from typing import Any

import click
from pydantic import ValidationError

COMMANDS = {
    "run": "asr_ingest.run:run",
    "submit": "asr_ingest.submit_cmd:submit",
    "status": "asr_ingest.submit_cmd:status",
    "resubmit": "asr_ingest.submit_cmd:resubmit",
    "dlq": "asr_ingest.dlq_cmd:dlq",
    "export": "asr_ingest.export_cmd:export",
    "show": "asr_ingest.export_cmd:show",
    "sandbox": "sandbox.cli:sandbox",
    "health": "asr_ingest.health_cmd:health",
}


def setting_error(exc: ValidationError) -> str:
    """One line naming each environment variable whose value is invalid, and why."""
    problems = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
        problems.append(f"{name}: {error['msg']}")
    return "bad setting: " + "; ".join(problems)


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when invoked (fast ``--help``).

    A bad environment value (:class:`pydantic.ValidationError` from the settings) ends the
    command with one line naming the variable, before anything starts.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ValidationError as exc:
            raise click.ClickException(setting_error(exc)) from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        command: Any = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup)
@click.version_option(package_name="asr-ingest")
def main() -> None:
    """asr-ingest: DashScope file transcription, from local media to archived results."""
