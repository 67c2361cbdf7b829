"""Foundation: settings from the environment, the embedded Redis, the receipt store."""

from __future__ import annotations

import logging

import pydantic
import pytest
import redis

from core.logs import configure_logging
from core.settings import load_settings
from core.store import PENDING_KEY, ReceiptStore


def test_settings_read_contract_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Contract variable names map onto the settings object, comma lists split."""
    monkeypatch.setenv("ARCHIVE_URLS", "file:///srv/a, s3://bucket/prefix")
    monkeypatch.setenv("DEDUPE_TTL_SECONDS", "3600")
    settings = load_settings()
    assert settings.archive_urls == ["file:///srv/a", "s3://bucket/prefix"]
    assert settings.dedupe_ttl_seconds == 3600
    assert settings.broker_url == settings.redis_url


def test_settings_bad_value_names_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid value raises an error naming the variable."""
    monkeypatch.setenv("WEBHOOK_MAX_BODY_BYTES", "lots")
    with pytest.raises(pydantic.ValidationError, match="webhook_max_body_bytes"):
        load_settings()


def test_settings_hide_secrets() -> None:
    """Secrets never appear in the settings' repr."""
    settings = load_settings(dashscope_api_key="sk-very-secret", oss_access_key_secret="oss-sec")
    assert "sk-very-secret" not in repr(settings)
    assert "oss-sec" not in repr(settings)


def test_claim_is_once_per_task(redis_client: redis.Redis) -> None:
    """The first claim stores the body; a repeat is refused and changes nothing."""
    store = ReceiptStore(redis_client, ttl_seconds=600)
    assert store.claim("t-1", b'{"a":1}', event_id="e1", model="fun-asr", now=100.0)
    assert not store.claim("t-1", b'{"a":2}', event_id="e2", now=200.0)
    receipt = store.load("t-1")
    assert receipt is not None
    assert (receipt.body, receipt.event_id, receipt.state) == (b'{"a":1}', "e1", "received")
    assert 0 < redis_client.ttl(store.key("t-1")) <= 600


def test_pending_until_enqueued(redis_client: redis.Redis) -> None:
    """A claimed receipt is pending until marked enqueued; stale ones are found by age."""
    store = ReceiptStore(redis_client, ttl_seconds=600)
    store.claim("old", b"{}", now=1000.0)
    store.claim("new", b"{}", now=1100.0)
    assert store.stale_pending(60, now=1120.0) == ["old"]
    store.mark_enqueued("old")
    assert store.stale_pending(60, now=2000.0) == ["new"]
    assert redis_client.zcard(PENDING_KEY) == 1


def test_release_undoes_claim(redis_client: redis.Redis) -> None:
    """Releasing a claim lets the next delivery claim again."""
    store = ReceiptStore(redis_client, ttl_seconds=600)
    store.claim("t-2", b"{}")
    store.release("t-2")
    assert store.load("t-2") is None
    assert store.claim("t-2", b"{}")


@pytest.mark.parametrize("later", ["archiving", "archived", "dead"])
def test_mark_enqueued_never_moves_backwards(redis_client: redis.Redis, later: str) -> None:
    """mark_enqueued never undoes a worker's later state; it still drops the pending entry."""
    store = ReceiptStore(redis_client, ttl_seconds=600)
    store.claim("t-3", b"{}")
    store.set_state("t-3", later)  # type: ignore[arg-type]  # parametrized ReceiptState
    redis_client.zadd(PENDING_KEY, {"t-3": 1.0})
    assert not store.mark_enqueued("t-3")
    receipt = store.load("t-3")
    assert receipt is not None and receipt.state == later
    assert redis_client.zcard(PENDING_KEY) == 0


def test_mark_enqueued_moves_received_only(redis_client: redis.Redis) -> None:
    """mark_enqueued moves received to enqueued and creates nothing for a missing receipt."""
    store = ReceiptStore(redis_client, ttl_seconds=600)
    store.claim("t-4", b"{}")
    assert store.mark_enqueued("t-4")
    receipt = store.load("t-4")
    assert receipt is not None and receipt.state == "enqueued"
    assert not store.mark_enqueued("t-absent")
    assert not redis_client.exists(store.key("t-absent"))


def test_claim_enqueued_stores_and_pushes_once(redis_client: redis.Redis) -> None:
    """claim_enqueued stores the receipt as enqueued and pushes one message; a repeat nothing."""
    store = ReceiptStore(redis_client, ttl_seconds=600)
    assert store.claim_enqueued("t-5", b'{"a":1}', queue_key="q", message="m1", now=100.0)
    assert not store.claim_enqueued("t-5", b'{"a":2}', queue_key="q", message="m2", now=200.0)
    receipt = store.load("t-5")
    assert receipt is not None
    assert (receipt.body, receipt.state, receipt.received_at) == (b'{"a":1}', "enqueued", 100.0)
    assert redis_client.lrange("q", 0, -1) == [b"m1"]
    assert redis_client.zcard(PENDING_KEY) == 0
    assert 0 < redis_client.ttl(store.key("t-5")) <= 600


def test_stdlib_log_records_lose_signed_query_strings(caplog: pytest.LogCaptureFixture) -> None:
    """A third-party library's log line keeps the URL but not its signing query string."""
    configure_logging("json")
    logging.getLogger("somelib").warning(
        "fetched %s", "https://b.oss.aliyuncs.com/r.json?Expires=1&Signature=abc"
    )
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["fetched https://b.oss.aliyuncs.com/r.json"]
