"""The local state of ``asr-ingest run``, kept between runs in ``ASR_INGEST_HOME``.

Layout (default ``./.asr-ingest``, resolved against the working directory)::

    <home>/redis/          the embedded Redis's data (append-only file): receipts, run and
                           submission records, dead letters
    <home>/logs/<part>.log each child's output (Redis, moto, sandbox, web, worker)
    <home>/beat-schedule   celery beat's state

When ``REDIS_URL`` is not configured, the commands that read state (``status``, ``show``,
``export``, ``dlq``, ``resubmit``) use the same embedded Redis: the one a running
``asr-ingest run`` serves, else one started on ``<home>/redis`` for the command's duration.
The server listens only on a unix socket whose path is derived from the home directory, so two
commands on one home share one server and never write one data directory twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click
import redis

from asr_ingest.embedded import EmbeddedRedis
from core.redis_client import connect
from core.settings import Settings, broker_url_for, load_settings

HOME_VARIABLE = "ASR_INGEST_HOME"
DEFAULT_HOME = ".asr-ingest"
SOCKET_PATH_LIMIT = 100
"""Bytes; a unix socket path must fit ``sun_path`` (108 bytes on Linux) with its NUL."""


def home_dir() -> Path:
    """``ASR_INGEST_HOME`` (default ``./.asr-ingest``) as an absolute path (not created)."""
    return Path(os.environ.get(HOME_VARIABLE) or DEFAULT_HOME).resolve()


def redis_dir(home: Path) -> Path:
    """Where the embedded Redis keeps its data under ``home``."""
    return home / "redis"


def log_dir(home: Path) -> Path:
    """Where child logs go under ``home``."""
    return home / "logs"


def socket_path(home: Path) -> Path:
    """The embedded Redis's unix socket for ``home``: inside it when the path is short enough,
    else in the temporary directory under a name derived from ``home``."""
    inside = redis_dir(home) / "redis.sock"
    if len(str(inside).encode()) <= SOCKET_PATH_LIMIT:
        return inside
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"asr-ingest-{digest}.sock"


def socket_url(home: Path) -> str:
    """``unix://`` URL (database 0) of the embedded Redis of ``home``."""
    return f"unix://{socket_path(home)}?db=0"


def answers(url: str) -> bool:
    """True when a Redis server answers PING at ``url`` within 1 s."""
    client = connect(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def has_state(home: Path) -> bool:
    """True when ``home`` holds an embedded Redis's data from an earlier run."""
    return any(redis_dir(home).glob("appendonly*"))


@contextlib.contextmanager
def local_redis_url(home: Path) -> Iterator[str | None]:
    """The URL of ``home``'s embedded Redis for one command; None when there is no state.

    Reuses the server of a running ``asr-ingest run``; otherwise starts one on the data
    directory and stops it on exit. Raises :class:`RuntimeError` when it does not start.
    """
    url = socket_url(home)
    if answers(url):
        yield url
        return
    if not has_state(home):
        yield None
        return
    server = EmbeddedRedis(redis_dir(home), socket=socket_path(home))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def command_settings() -> Iterator[Settings]:
    """Settings for a command that reads state after a run: the configured Redis, else the
    embedded one of ``ASR_INGEST_HOME`` (:func:`local_redis_url`).

    Raises :class:`click.ClickException` (one line) when neither exists.
    """
    settings = load_settings()
    if "redis_url" in settings.model_fields_set:
        yield settings
        return
    home = home_dir()
    with local_redis_url(home) as url:
        if url is None:
            raise click.ClickException(
                f"no local state in {home} (set REDIS_URL, or run asr-ingest run first)"
            )
        yield load_settings(redis_url=url, celery_broker_url=broker_url_for(url))


def state_settings() -> Settings:
    """:func:`command_settings` for the running click command (released when it ends)."""
    return click.get_current_context().with_resource(command_settings())
