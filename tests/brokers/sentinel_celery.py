"""Entry point ``celery -A tests.brokers.sentinel_celery``: the worker, Sentinel shim first."""

from __future__ import annotations

import tests.brokers.sentinel_shim  # noqa: F401  # patches redis.Redis.from_url first
from worker.celery_app import app

__all__ = ["app"]
