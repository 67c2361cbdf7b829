"""The worker's exception tree; every class carries a machine-readable ``reason``.

::

    WorkerError                    base; never raised itself
    ├── TransientError             worth retrying: network errors, timeouts, 429, 5xx, a busy lock
    │   └── ExpiredLinkError       403/404 from the result host: ask DashScope for a fresh link once
    └── PermanentError             retrying cannot help: bad event, unknown model, oversized
                                   result, a URL outside the allowed pattern, exhausted retries

Third-party exceptions (httpx, botocore, oss2, redis) are wrapped with ``raise ... from exc``
where they are caught, so callers and retry policies see only this tree. ``reason`` feeds logs
and metric labels: short, snake_case, low-cardinality.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""

    reason: str = "worker_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TransientError(WorkerError):
    """A failure that may pass: retry with backoff, then dead-letter."""

    reason = "transient"


class ExpiredLinkError(TransientError):
    """The result host answered 403/404: the signed ``transcription_url`` has expired."""

    reason = "expired_link"


class PermanentError(WorkerError):
    """A failure that retrying cannot fix: record it and dead-letter at once."""

    reason = "permanent"
