"""One factory for Redis clients: plain URLs, and Sentinel-managed primaries by URL.

Every process gets its Redis client from :func:`connect` (``REDIS_URL``), so a deployment
switches to Sentinel by changing the URL alone. Forms (``docs/contract.md``, ``REDIS_URL``):

- anything redis-py's ``Redis.from_url`` takes: ``redis://host:6379/0``, ``rediss://...``,
  ``unix:///path/redis.sock?db=0``;
- ``redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]
  [?sentinel_password=P&sentinel_username=U]``: the primary of the Sentinel group ``SERVICE``
  (the ``sentinel monitor`` name), database ``DB`` (default 0), found through any of the listed
  sentinels (port default 26379). ``USER``/``PASSWORD`` authenticate to the primary; the
  ``sentinel_*`` parameters to the sentinels, when they require it. ``rediss+sentinel://``
  speaks TLS to the primary.

A Sentinel client asks the sentinels for the primary's address on each new connection and
drops its pooled connections when the address changes (redis-py ``SentinelConnectionPool``):
after a failover the next command reaches the new primary without a restart. While no primary
is known (the seconds of a failover), commands raise :class:`redis.ConnectionError`.

Replication is asynchronous: a write the old primary acknowledged in its last milliseconds
may not have reached the replica that takes over (README, "Failover with Sentinel").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL; ``password`` fields never appear in ``repr``."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: bool = False


def is_sentinel_url(url: str) -> bool:
    """True for ``redis+sentinel://`` and ``rediss+sentinel://`` URLs."""
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL (module docstring); raises :class:`ValueError`
    naming what is wrong (no host, no service name, a database that is not a number)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL (expected {SENTINEL_SCHEMES[0]}://)")
    netloc, _, path_query = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    path, _, query = path_query.partition("?")
    service, _, db = path.partition("/")
    params = {key: values[-1] for key, values in parse_qs(query).items()}
    if not service:
        raise ValueError("Sentinel URL names no service (redis+sentinel://HOSTS/SERVICE/DB)")
    if db.strip("/") and not db.strip("/").isdigit():
        raise ValueError(f"Sentinel URL database is not a number: {db!r}")
    return SentinelURL(
        sentinels=_hosts(hosts),
        service=unquote(service),
        db=int(db.strip("/") or 0),
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_username=params.get("sentinel_username"),
        sentinel_password=params.get("sentinel_password"),
        ssl=scheme.lower().startswith("rediss"),
    )


def _hosts(hosts: str) -> tuple[tuple[str, int], ...]:
    """``h1:p1,h2,[::1]:p3`` as (host, port) pairs; raises ValueError when there is none."""
    found = []
    for item in filter(None, (part.strip() for part in hosts.split(","))):
        parts = urlsplit(f"//{item}")
        if not parts.hostname:
            raise ValueError(f"Sentinel URL host is empty: {item!r}")
        found.append((parts.hostname, parts.port or DEFAULT_SENTINEL_PORT))
    if not found:
        raise ValueError("Sentinel URL names no sentinel host")
    return tuple(found)


def connect(url: str, **options: Any) -> redis.Redis:
    """A client for ``url`` (any form of the module docstring); connects lazily.

    ``options`` are redis-py client options (``socket_timeout``, ``socket_connect_timeout``,
    ``retry``, ``health_check_interval``, ``decode_responses``, ...), applied to the primary's
    connections; the ``socket_*`` ones also to the sentinels'. Raises :class:`ValueError` for
    a malformed URL.
    """
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    sockets = {key: value for key, value in options.items() if key.startswith("socket_")}
    sentinel_kwargs = dict(sockets)
    if parsed.sentinel_password is not None:
        sentinel_kwargs.update(username=parsed.sentinel_username, password=parsed.sentinel_password)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis.sentinel is untyped
        list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs, **sockets
    )
    primary_options = {**options, "db": parsed.db}
    if parsed.username is not None:
        primary_options["username"] = parsed.username
    if parsed.password is not None:
        primary_options["password"] = parsed.password
    if parsed.ssl:
        primary_options["ssl"] = True
    client: redis.Redis = sentinel.master_for(parsed.service, **primary_options)  # type: ignore[no-untyped-call]  # likewise
    return client
