"""Entry point ``tests.brokers.sentinel_wsgi:app``: the webhook, Sentinel shim first."""

from __future__ import annotations

import tests.brokers.sentinel_shim  # noqa: F401  # patches redis.Redis.from_url first
from webhook.wsgi import app

__all__ = ["app"]
