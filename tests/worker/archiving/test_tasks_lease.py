"""Leases, delivery counts, stuck-task detection and the retry backoff policy."""

from __future__ import annotations

import time

import redis

from core.errors import TransientError
from core.settings import load_settings
from core.store import OPEN_KEY, PENDING_KEY, ReceiptStore
from worker.archiving.lease import (
    DELIVERIES_KEY,
    INFLIGHT_KEY,
    LEASE_KEY,
    Lease,
    count_delivery,
    reset_deliveries,
    start_run,
    stuck_tasks,
)
from worker.archiving.service import ArchiveService


def test_lease_is_exclusive_until_released(redis_client: redis.Redis) -> None:
    """A second holder cannot take a held lease; release by the holder frees it."""
    first, second = Lease(redis_client, "t", 30), Lease(redis_client, "t", 30)
    assert first.acquire() and not second.acquire()
    second.release(finished=False)  # not the holder: changes nothing
    assert not Lease(redis_client, "t", 30).acquire()
    first.release(finished=True)
    assert second.acquire()
    assert redis_client.zscore(INFLIGHT_KEY, "t") is not None


def test_dead_holder_lease_expires(redis_client: redis.Redis) -> None:
    """A lease that is not renewed expires after its lifetime; another worker takes it."""
    assert Lease(redis_client, "t", 0.2).acquire()
    time.sleep(0.3)
    assert Lease(redis_client, "t", 0.2).acquire()


def test_heartbeat_keeps_lease_and_detects_loss(redis_client: redis.Redis) -> None:
    """Inside ``with`` the lease outlives its lifetime; once taken away, check() raises."""
    lease = Lease(redis_client, "t", 0.3)
    assert lease.acquire()
    with lease:
        time.sleep(0.7)
        assert not Lease(redis_client, "t", 0.3).acquire()
        redis_client.set(lease.key, "thief")
        time.sleep(0.3)
        try:
            lease.check()
        except TransientError as exc:
            assert exc.reason == "lease_lost"
        else:
            raise AssertionError("lost lease not detected")


def test_delivery_count_and_reset(redis_client: redis.Redis) -> None:
    """Deliveries count up per task and reset to zero."""
    assert [count_delivery(redis_client, "t", 60) for _ in range(3)] == [1, 2, 3]
    reset_deliveries(redis_client, "t")
    assert count_delivery(redis_client, "t", 60) == 1


def test_stuck_tasks_need_old_heartbeat_and_no_lease(redis_client: redis.Redis) -> None:
    """Only in-flight tasks with an old heartbeat and no live lease are stuck."""
    redis_client.zadd(INFLIGHT_KEY, {"old": 100.0, "held": 100.0, "recent": 990.0})
    redis_client.set("asr:archive:lease:held", "x")
    assert stuck_tasks(redis_client, 60, now=1000.0) == ["old"]


def test_backoff_is_jittered_and_capped(redis_client: redis.Redis) -> None:
    """Backoff grows with retries, stays under the cap and half the visibility timeout."""
    settings = load_settings(
        archive_retry_base_seconds=1.0,
        archive_retry_max_seconds=300.0,
        broker_visibility_timeout_seconds=100,
    )
    service = ArchiveService(settings, redis_client, [], None, lambda _: {})  # type: ignore[arg-type]  # backoff needs no fetcher
    early = [service.backoff_seconds(0) for _ in range(200)]
    late = [service.backoff_seconds(20) for _ in range(200)]
    assert all(0 <= s <= 1.0 for s in early) and len(set(early)) > 100
    assert all(0 <= s <= 50.0 for s in late) and max(late) > 25.0


def test_acquire_for_loads_the_receipt_and_takes_the_lease(redis_client: redis.Redis) -> None:
    """One script loads the receipt and takes the lease; no receipt: no lease is taken."""
    store = ReceiptStore(redis_client, 600)
    assert Lease(redis_client, "none", 30).acquire_for(store) == (None, False)
    assert redis_client.get(LEASE_KEY.format(task_id="none")) is None
    store.claim("t", b'{"x": 1}', event_id="e-1", now=5.0)
    receipt, taken = Lease(redis_client, "t", 30).acquire_for(store)
    assert taken and receipt == store.load("t")
    assert redis_client.zscore(INFLIGHT_KEY, "t") is not None
    receipt, taken = Lease(redis_client, "t", 30).acquire_for(store)
    assert receipt is not None and not taken


def test_start_run_counts_and_sets_archiving_within_the_limit(redis_client: redis.Redis) -> None:
    """Each run counts one delivery and sets the receipt ``archiving``, unless over the limit."""
    store = ReceiptStore(redis_client, 600)
    store.claim("t", b"{}", now=5.0)
    assert start_run(redis_client, "t", 60, 1) == 1
    assert store.load("t").state == "archiving"  # type: ignore[union-attr]  # stored above
    assert redis_client.zscore(PENDING_KEY, "t") is None
    assert redis_client.zscore(OPEN_KEY, "t") == 5.0  # still open, its wait unchanged
    store.set_state("t", "enqueued")
    assert start_run(redis_client, "t", 60, 1) == 2
    assert store.load("t").state == "enqueued"  # type: ignore[union-attr]  # stored above
    assert 0 < redis_client.ttl(DELIVERIES_KEY.format(task_id="t")) <= 60


def test_release_archived_ends_the_run_at_once(redis_client: redis.Redis) -> None:
    """The receipt is archived and leaves the open set; count, lease, in-flight are gone."""
    store = ReceiptStore(redis_client, 600)
    store.claim("t", b"{}", now=5.0)
    lease = Lease(redis_client, "t", 30)
    assert lease.acquire()
    start_run(redis_client, "t", 60, 5)
    lease.release_archived()
    assert lease.released and store.load("t").state == "archived"  # type: ignore[union-attr]
    assert redis_client.zscore(OPEN_KEY, "t") is None
    assert redis_client.zscore(INFLIGHT_KEY, "t") is None
    assert not redis_client.exists(
        LEASE_KEY.format(task_id="t"), DELIVERIES_KEY.format(task_id="t")
    )
    other = Lease(redis_client, "t", 30)
    assert other.acquire()
    lease.release_archived()  # not the holder any more: the other's lease stays
    assert redis_client.get(LEASE_KEY.format(task_id="t")) is not None
