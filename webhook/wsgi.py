"""Entry point for ``gunicorn webhook.wsgi:app``: builds the app at import, then freezes the GC.

gunicorn (without ``--preload``) imports this module in each worker. Everything built here (about
90 000 objects: Flask, Celery, kombu, redis-py, cryptography) lives as long as the process, yet
the cyclic garbage collector would walk all of it on every full (generation 2) collection: about
40 to 70 ms with the request path stopped, a few times a minute under load, which was the p99
at half the peak rate in ``tests/benchmarks/webhook_bench.py``. :func:`gc.freeze` moves them to
the permanent generation (after one collection, so no garbage is kept); later collections walk
only what requests allocate. Objects frozen here are still freed by reference counting.
"""

from __future__ import annotations

import gc

from webhook import create_app

app = create_app()
gc.collect()
gc.freeze()
