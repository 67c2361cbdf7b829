"""Liveness and readiness checks (``/livez``, ``/readyz``).

Bodies follow the IETF draft "Health Check Response Format for HTTP APIs"
(``application/health+json``; ``status`` ``pass``/``fail``), as the contract asks.
"""

from __future__ import annotations

from typing import Any

import redis
import structlog

log = structlog.get_logger(__name__)

HEALTH_JSON = "application/health+json"
BROKER_CHECK_TIMEOUT_SECONDS = 2.0


def redis_answers(client: redis.Redis) -> bool:
    """True when Redis answers PING."""
    try:
        return bool(client.ping())
    except redis.RedisError as exc:
        log.warning("readyz_redis_failed", error=type(exc).__name__)
        return False


def broker_answers(celery: Any) -> bool:
    """True when a fresh broker connection can be established (one attempt, short timeout)."""
    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, timeout=BROKER_CHECK_TIMEOUT_SECONDS
            )
            return True
    except Exception as exc:  # any transport error means "not ready"
        log.warning("readyz_broker_failed", error=type(exc).__name__)
        return False


def readiness(checks: dict[str, bool]) -> tuple[dict[str, Any], int]:
    """A health+json document and HTTP status (200 or 503) from named check results."""
    passed = all(checks.values())
    document = {
        "status": "pass" if passed else "fail",
        "checks": {
            f"{name}:responds": [{"status": "pass" if ok else "fail"}]
            for name, ok in checks.items()
        },
    }
    return document, 200 if passed else 503
