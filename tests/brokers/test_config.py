"""Broker and Redis URLs: the Sentinel URL form, kombu's spellings, per-broker options."""

from __future__ import annotations

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from core.broker import broker_config, broker_url, publisher, transport_options
from core.redis_client import connect, is_sentinel_url, parse_sentinel_url
from core.settings import load_settings

SENTINEL = "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/2"


def test_sentinel_url_parses_hosts_service_db_and_hides_passwords() -> None:
    """Hosts (default port 26379, IPv6 in brackets), service, database; no password in repr."""
    parsed = parse_sentinel_url(SENTINEL + "?sentinel_password=other")
    assert parsed.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (parsed.service, parsed.db, parsed.password) == ("mymaster", 2, "s3cret")
    assert parsed.sentinel_password == "other"
    assert "s3cret" not in repr(parsed) and "other" not in repr(parsed)
    assert parse_sentinel_url("redis+sentinel://h/svc").db == 0
    assert is_sentinel_url(SENTINEL) and not is_sentinel_url("redis://h:6379/0")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h:26379", "no service"),
        ("redis+sentinel://h:26379/svc/x", "not a number"),
        ("redis+sentinel:///svc/0", "no sentinel host"),
        ("redis://h/0", "not a Sentinel URL"),
    ],
)
def test_malformed_sentinel_urls_are_named(url: str, message: str) -> None:
    """A malformed Sentinel URL raises ValueError saying what is missing."""
    with pytest.raises(ValueError, match=message):
        parse_sentinel_url(url)


def test_connect_builds_a_sentinel_managed_client_with_the_options() -> None:
    """``connect`` on a Sentinel URL: a client whose pool asks the sentinels, options applied."""
    client = connect(SENTINEL, socket_timeout=2.0)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["socket_timeout"] == 2.0
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26379, 26380]
    plain = connect("redis://127.0.0.1:6390/3")
    assert isinstance(plain, redis.Redis) and plain.connection_pool.connection_kwargs["db"] == 3


def test_sentinel_redis_url_becomes_kombus_sentinel_broker() -> None:
    """REDIS_URL in Sentinel form, no CELERY_BROKER_URL: kombu's sentinel:// and master_name."""
    settings = load_settings(redis_url=SENTINEL, celery_broker_url=None)
    assert broker_url(settings) == ";".join(
        f"sentinel://:s3cret@{host}:{port}/2"
        for host, port in [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)]
    )
    assert transport_options(settings)["master_name"] == "mymaster"
    config = broker_config(settings)
    assert config["broker_transport_options"]["visibility_timeout"] == 3600


def test_kombu_sentinel_broker_takes_master_name_from_query_or_redis_url() -> None:
    """CELERY_BROKER_URL in kombu's form: master_name from its query, else from REDIS_URL."""
    given = load_settings(
        celery_broker_url="sentinel://h1:26379;sentinel://h2:26379/0?master_name=m"
    )
    assert broker_url(given) == "sentinel://h1:26379;sentinel://h2:26379/0"
    assert transport_options(given)["master_name"] == "m"
    derived = load_settings(redis_url=SENTINEL, celery_broker_url="sentinel://h1:26379/1")
    assert transport_options(derived)["master_name"] == "mymaster"
    with pytest.raises(ValueError, match="master_name"):
        transport_options(load_settings(celery_broker_url="sentinel://h1:26379/1"))


def test_amqp_broker_confirms_publishes_and_keeps_redis_options_out() -> None:
    """RabbitMQ: publisher confirms, short read/write timeouts for the webhook, no Redis options."""
    settings = load_settings(celery_broker_url="amqp://guest:guest@127.0.0.1:5672//")
    assert transport_options(settings) == {"confirm_publish": True}
    config = broker_config(settings)
    assert config["broker_connection_max_retries"] is None
    assert config["worker_cancel_long_running_tasks_on_connection_loss"] is False
    options = publisher(settings).conf.broker_transport_options
    assert options == {"confirm_publish": True, "read_timeout": 2.0, "write_timeout": 2.0}
