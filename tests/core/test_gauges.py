"""State gauges read from Redis at scrape time: unarchived tasks by age, dead letters, queues."""

from __future__ import annotations

import time

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.gauges import StateCollector
from core.store import ReceiptStore
from worker.archiving.dlq import DeadLetters


def scrape(collector: StateCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape: (name, sorted labels) → value."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_unarchived_tasks_by_age_and_final_states_leave(redis_client: redis.Redis) -> None:
    """Open receipts are counted by age; archived and dead ones are not; replay reopens."""
    store = ReceiptStore(redis_client, 600)
    now = time.time()
    store.claim("young", b"{}", now=now - 60)
    store.claim("old", b"{}", now=now - 7 * 3600)
    store.claim("ancient", b"{}", now=now - 21 * 3600)
    store.claim("done", b"{}", now=now - 22 * 3600)
    store.set_state("done", "archived")
    samples = scrape(StateCollector(redis_client))
    count = {
        age: samples[("asr_unarchived_tasks", (("older_than", age),))]
        for age in ("0s", "1h", "6h", "20h")
    }
    assert count == {"0s": 3, "1h": 2, "6h": 2, "20h": 1}
    assert 21 * 3600 - 5 < samples[("asr_unarchived_oldest_age_seconds", ())] < 21 * 3600 + 60
    store.set_state("ancient", "dead")
    store.set_state("ancient", "enqueued")  # a replay: open again
    assert (
        scrape(StateCollector(redis_client))[("asr_unarchived_tasks", (("older_than", "0s"),))] == 3
    )


def test_dead_letters_by_kind_and_reason_and_queue_lengths(redis_client: redis.Redis) -> None:
    """Dead letters are counted per list and reason; the broker's lists by queue."""
    DeadLetters(redis_client).add("a", "result_expired", 3, "x")
    DeadLetters(redis_client).add("b", "result_expired", 3, "x")
    DeadLetters(redis_client, key="asr:notify:dlq").add("a", "notify_rejected", 1, "x")
    redis_client.lpush("archive", "m1", "m2")
    samples = scrape(StateCollector(redis_client, broker=redis_client))
    assert samples[("asr_dead_letters", (("kind", "archive"), ("reason", "result_expired")))] == 2
    assert samples[("asr_dead_letters", (("kind", "notify"), ("reason", "notify_rejected")))] == 1
    assert samples[("asr_queue_messages", (("queue", "archive"),))] == 2
    assert samples[("asr_queue_messages", (("queue", "submit"),))] == 0


def test_redis_down_counts_a_scrape_error() -> None:
    """Without Redis the scrape still answers: only the error counter, incremented."""
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    samples = scrape(StateCollector(dead))
    assert samples == {("asr_state_scrape_errors_total", ()): 1.0}
