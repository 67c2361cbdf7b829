"""structlog configuration, applied by the factories (``create_app``, ``create_celery``).

JSON lines to stdout in production, a coloured console renderer on a terminal (``LOG_FORMAT``).
Context such as ``task_id`` and ``event_id`` is bound with :mod:`structlog.contextvars`.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

# Query-string parameters that make a URL a credential (OSS, S3, DashScope result links).
_SIGNED_QUERY = re.compile(r"(https?://[^\s?\"']+)\?[^\s\"']*", re.IGNORECASE)


def strip_query(url: str) -> str:
    """Return ``url`` without its query string and fragment (a signed URL is a credential)."""
    return url.split("?", 1)[0].split("#", 1)[0]


def redact_urls(text: str) -> str:
    """Remove the query string of every URL found in ``text``."""
    return _SIGNED_QUERY.sub(r"\1", text)


def _redact_event(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str) and "?" in value and "://" in value:
            event_dict[key] = redact_urls(value)
    return event_dict


_configured: tuple[str, int] | None = None
"""The arguments of the last :func:`configure_logging` call in this process."""


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    """Configure structlog (and the stdlib root logger) once per process.

    ``log_format`` is ``"json"`` (one JSON object per line on stdout) or ``"console"``.
    Every string value that contains a URL with a query string is redacted. Idempotent: a
    second call with the same arguments changes nothing.
    """
    global _configured  # the one process-wide logging setup
    if _configured == (log_format, level):
        return
    _configured = (log_format, level)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_event,
    ]
    renderer: Any
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer()
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write(2) per line: PrintLogger's print() writes the line and its newline
        # separately when stdout is unbuffered (PYTHONUNBUFFERED=1, as in our image), so lines
        # from processes sharing stdout (gunicorn workers) could interleave, and each line
        # woke the log reader twice. No file argument: sys.stdout is looked up per line.
        logger_factory=structlog.WriteLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=level, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s")
    install_redaction(logging.getLogger())
    # httpx logs every request line at INFO, signed query strings included.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # oss2 logs every non-2xx answer at INFO as "Exception", the expected 404 of a HEAD that
    # checks whether an object exists included; its real failures reach us as exceptions.
    logging.getLogger("oss2").setLevel(logging.WARNING)


class RedactingFilter(logging.Filter):
    """Remove URL query strings from stdlib log records (third-party libraries log URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message and "://" in message:
            record.msg, record.args = redact_urls(message), None
        return True


def install_redaction(logger: logging.Logger) -> None:
    """Put a :class:`RedactingFilter` on every handler of ``logger`` (once each)."""
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
