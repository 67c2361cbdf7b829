"""``python -m sandbox``: the same as ``asr-ingest sandbox``."""

from sandbox.cli import sandbox

sandbox(prog_name="asr-ingest sandbox")
