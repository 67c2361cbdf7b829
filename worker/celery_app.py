"""Entry point for ``celery -A worker.celery_app``: the only place the worker app is built at import."""

from __future__ import annotations

from worker import create_celery

app = create_celery()
