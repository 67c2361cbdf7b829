"""The publishing intake (claim → send_task → mark): failure paths with a real Redis that goes
away at the worst moment, and concurrent deliveries."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import redis

from asr_ingest.embedded import EmbeddedRedis
from core.broker import publisher
from core.settings import broker_url_for, load_settings
from core.store import PENDING_KEY, ReceiptStore
from tests.webhook.conftest import archive_messages
from webhook.admission import Envelope
from webhook.errors import BrokerUnavailable
from webhook.intake import PublishingIntake, archive_publisher

EVENT = Envelope(type="dashscope:System:AsyncTaskFinish", event_id="e-1", task_id="t-1", model="m")


def store_for(server: EmbeddedRedis) -> ReceiptStore:
    """A receipt store on ``server`` whose client gives up fast."""
    client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    return ReceiptStore(client, ttl_seconds=600)


def test_publish_and_release_both_fail_leaves_pending_receipt(
    private_redis: EmbeddedRedis,
) -> None:
    """Redis dies during the publish: 503, and the stored receipt stays pending for the sweep."""
    store = store_for(private_redis)

    def publish_while_redis_dies(task_id: str) -> None:
        private_redis.stop()
        raise ConnectionError("broker gone too")

    with pytest.raises(BrokerUnavailable):
        PublishingIntake(store, publish_while_redis_dies).take(EVENT, b"{}")
    private_redis.start()
    receipt = store.load("t-1")
    assert receipt is not None and receipt.state == "received"
    assert store.stale_pending(0, now=receipt.received_at + 1) == ["t-1"]


def test_mark_failure_after_publish_still_accepts(private_redis: EmbeddedRedis) -> None:
    """The message is out but marking fails: accepted; the receipt stays pending for the sweep."""
    store = store_for(private_redis)
    published: list[str] = []

    def publish_then_redis_dies(task_id: str) -> None:
        published.append(task_id)
        private_redis.stop()

    assert PublishingIntake(store, publish_then_redis_dies).take(EVENT, b"{}") == "accepted"
    assert published == ["t-1"]
    private_redis.start()
    client = redis.Redis.from_url(private_redis.url)
    assert client.zscore(PENDING_KEY, "t-1") is not None
    client.close()


def test_publish_failure_releases_claim(redis_client: redis.Redis) -> None:
    """A publish failure with Redis healthy undoes the claim, so the retry is accepted afresh."""
    store = ReceiptStore(redis_client, ttl_seconds=600)

    def refuse(task_id: str) -> None:
        raise OSError("connection refused")

    with pytest.raises(BrokerUnavailable):
        PublishingIntake(store, refuse).take(EVENT, b"{}")
    assert store.load("t-1") is None and redis_client.zcard(PENDING_KEY) == 0
    assert PublishingIntake(store, lambda task_id: None).take(EVENT, b"{}") == "accepted"


def test_parallel_takes_on_publish_path_leave_one_message(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """50 threads take one event through claim → send_task → mark: one accepted, one message."""
    broker_url = broker_url_for(redis_url).replace("virtual_host=0", "virtual_host=1")
    settings = load_settings(redis_url=redis_url, celery_broker_url=broker_url)
    intake = PublishingIntake(
        ReceiptStore(redis_client, 600), archive_publisher(publisher(settings))
    )
    barrier = threading.Barrier(50)
    outcomes: list[str] = []

    def one() -> None:
        barrier.wait()
        outcomes.append(intake.take(EVENT, b"{}"))

    threads = [threading.Thread(target=one) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(outcomes) == {"accepted": 1, "duplicate": 49}
    broker = redis.Redis.from_url(redis_url.replace("db=0", "db=1"))
    assert [m["args"] for m in archive_messages(broker)] == [["t-1"]]
    broker.close()
    receipt = ReceiptStore(redis_client, 600).load("t-1")
    assert receipt is not None and receipt.state == "enqueued"
