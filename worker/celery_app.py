"""Entry point for ``celery -A worker.celery_app``: builds the app at import."""

from __future__ import annotations

from worker import create_celery

app = create_celery()
