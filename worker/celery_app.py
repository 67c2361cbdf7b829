"""Entry point for ``celery -A worker.celery_app``: builds the app at import.

A configuration error is one line on stderr naming the variables, then exit status 78
(``EX_CONFIG``), instead of a traceback.
"""

from __future__ import annotations

import sys

from core.settings import SettingsError
from worker import create_celery

EX_CONFIG = 78

try:
    app = create_celery()
except SettingsError as exc:
    print(f"asr-ingest worker: configuration error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(EX_CONFIG) from None
