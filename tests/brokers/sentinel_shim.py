"""Route ``redis.Redis.from_url`` through :func:`core.redis_client.connect` for Sentinel URLs.

Interim, for the Sentinel tests only: the webhook (``webhook/__init__.py``) and the worker
(``worker/app.py``) still build their Redis clients with ``redis.Redis.from_url``, which knows
no ``redis+sentinel://``. Once they call :func:`core.redis_client.connect`, this module and its
two entry points (:mod:`tests.brokers.sentinel_wsgi`, :mod:`tests.brokers.sentinel_celery`)
go, and the tests run ``webhook.wsgi:app`` and ``worker.celery_app`` directly. Other URLs
take the original path unchanged.
"""

from __future__ import annotations

from typing import Any

import redis

from core.redis_client import connect, is_sentinel_url

_original = redis.Redis.from_url.__func__  # type: ignore[attr-defined]


def _from_url(cls: type[redis.Redis], url: str, **options: Any) -> redis.Redis:
    if is_sentinel_url(url):
        return connect(url, **options)
    client: redis.Redis = _original(cls, url, **options)
    return client


redis.Redis.from_url = classmethod(_from_url)  # type: ignore[assignment,method-assign]
