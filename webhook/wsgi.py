"""Entry point for ``gunicorn webhook.wsgi:app``: builds the app at import, then freezes the GC.

gunicorn (without ``--preload``) imports this module in each worker. Everything built here (about
90 000 objects: Flask, Celery, kombu, redis-py, cryptography) lives as long as the process, yet
the cyclic garbage collector would walk all of it on every full (generation 2) collection: about
40 to 70 ms with the request path stopped, a few times a minute under load, which was the p99
at half the peak rate in ``tests/benchmarks/webhook_bench.py``. :func:`gc.freeze` moves them to
the permanent generation (after one collection, so no garbage is kept); later collections walk
only what requests allocate. Objects frozen here are still freed by reference counting.

A configuration error (a missing ``WEBHOOK_PUBLIC_URL``, a bad ``EVENTBRIDGE_REGIONS``) is one
line on stderr naming the variable, then exit status 4: gunicorn's arbiter reads that status
from a worker as "App failed to load" and stops, instead of restarting workers in a loop.
"""

from __future__ import annotations

import gc
import sys

from core.settings import SettingsError
from webhook import create_app

APP_LOAD_ERROR = 4
"""The worker exit status gunicorn's arbiter treats as "the application cannot load": halt."""

try:
    app = create_app()
except SettingsError as exc:
    print(f"asr-ingest webhook: configuration error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(APP_LOAD_ERROR) from None
gc.collect()
gc.freeze()
