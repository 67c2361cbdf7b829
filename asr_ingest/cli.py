"""The ``asr-ingest`` command (console script). Subcommands load lazily from their modules.

Commands and their modules (the contract's "Command line" table):

=============  ==========================================
``run``        :mod:`asr_ingest.run`: everything at once, for a laptop
``submit``     :mod:`asr_ingest.submit_cmd`: upload and submit local media
``status``     :mod:`asr_ingest.submit_cmd`: state of one task or file
``resubmit``   :mod:`asr_ingest.submit_cmd`: resubmit a task's failed files once
``dlq``        :mod:`asr_ingest.dlq_cmd`: list and replay dead letters
``sandbox``    :mod:`sandbox.cli`: the DashScope + EventBridge stand-in
=============  ==========================================
"""

from __future__ import annotations

import importlib
from typing import Any

import click

COMMANDS = {
    "run": "asr_ingest.run:run",
    "submit": "asr_ingest.submit_cmd:submit",
    "status": "asr_ingest.submit_cmd:status",
    "resubmit": "asr_ingest.submit_cmd:resubmit",
    "dlq": "asr_ingest.dlq_cmd:dlq",
    "sandbox": "sandbox.cli:sandbox",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when invoked (fast ``--help``)."""

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
