"""Gauges of the pipeline's state, read from Redis when Prometheus scrapes (no process keeps them).

:class:`StateCollector` is a prometheus-client collector; the webhook's ``/metrics`` and the
worker's metrics server register it on the registry they expose, so whichever is scraped reports
the same numbers (alert on one job's series only). Each scrape costs a handful of Redis commands
(``ZCOUNT``, ``HLEN``, ``LLEN``); dead letters are read whole only while there are at most
:data:`MAX_LETTERS_BY_REASON` of them.

Series (names per the Prometheus naming conventions; units in the name):

``asr_unarchived_tasks{older_than}``
    receipts neither archived nor dead-lettered, received more than ``older_than`` ago
    (``0s``, ``1h``, ``6h``, ``20h``): a result link lives 24 h, so ``20h`` above zero pages.
``asr_unarchived_oldest_age_seconds``
    age of the oldest such receipt (0 when none).
``asr_dead_letters{kind, reason}``
    dead letters waiting for an operator: ``kind`` ``archive`` or ``notify``.
``asr_queue_messages{queue}``
    messages waiting on the Redis broker's ``archive`` and ``submit`` lists (only when the
    broker is Redis; RabbitMQ reports its queues itself).
``asr_dashscope_breaker_open``
    1 while the account circuit breaker is open (its hash ``asr:breaker:account``, written by
    ``worker.submission.breaker``, exists), else 0: submissions are paused.
``asr_state_scrape_errors_total``
    scrapes whose Redis reads failed (the gauges above are then absent).
"""

from __future__ import annotations

import json
import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import cast

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.queues import ARCHIVE_QUEUE, SUBMIT_QUEUE
from core.store import OPEN_KEY

AGES = (("0s", 0.0), ("1h", 3600.0), ("6h", 6 * 3600.0), ("20h", 20 * 3600.0))
DEAD_LETTER_KEYS = {"archive": "asr:dlq", "notify": "asr:notify:dlq"}
BREAKER_KEY = "asr:breaker:account"
"""The account circuit breaker's hash: present while it is open (``worker.submission.breaker``)."""
MAX_LETTERS_BY_REASON = 10_000


class StateCollector(Collector):
    """Collects the state gauges from ``client`` (``REDIS_URL``); ``broker`` is the broker's
    Redis client when the broker is Redis (its queue lists are counted), else None."""

    def __init__(self, client: redis.Redis, broker: redis.Redis | None = None) -> None:
        self._redis = client
        self._broker = broker
        self._errors = 0

    def collect(self) -> Iterator[Metric]:
        """Yield the gauges; on a Redis error only the error counter."""
        try:
            metrics = [
                self._unarchived(),
                *self._oldest(),
                self._dead_letters(),
                self._breaker(),
            ]
            if self._broker is not None:
                metrics.append(self._queues(self._broker))
        except redis.RedisError:
            self._errors += 1
            metrics = []
        yield from metrics
        errors = CounterMetricFamily("asr_state_scrape_errors", "Scrapes whose Redis reads failed.")
        errors.add_metric([], self._errors)
        yield errors

    def _unarchived(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "asr_unarchived_tasks",
            "Receipts neither archived nor dead-lettered, by minimum age.",
            labels=["older_than"],
        )
        now = time.time()
        for label, age in AGES:
            family.add_metric([label], float(self._redis.zcount(OPEN_KEY, "-inf", now - age)))
        return family

    def _oldest(self) -> list[GaugeMetricFamily]:
        first = cast(
            "list[tuple[bytes, float]]", self._redis.zrange(OPEN_KEY, 0, 0, withscores=True)
        )
        age = max(0.0, time.time() - first[0][1]) if first else 0.0
        family = GaugeMetricFamily(
            "asr_unarchived_oldest_age_seconds", "Age of the oldest unarchived receipt, seconds."
        )
        family.add_metric([], age)
        return [family]

    def _dead_letters(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "asr_dead_letters", "Dead letters waiting for an operator.", labels=["kind", "reason"]
        )
        for kind, key in DEAD_LETTER_KEYS.items():
            for reason, count in self._reasons(key).items():
                family.add_metric([kind, reason], float(count))
        return family

    def _breaker(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "asr_dashscope_breaker_open",
            "1 while submissions are paused by an account-wide DashScope error.",
        )
        family.add_metric([], float(self._redis.exists(BREAKER_KEY)))
        return family

    def _reasons(self, key: str) -> dict[str, int]:
        size = int(self._redis.hlen(key))
        if size == 0:
            return {}
        if size > MAX_LETTERS_BY_REASON:
            return {"many": size}
        values = cast("list[bytes]", self._redis.hvals(key))
        return dict(Tally(str(json.loads(raw).get("reason", "unknown")) for raw in values))

    @staticmethod
    def _queues(broker: redis.Redis) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "asr_queue_messages", "Messages waiting on the broker's queue.", labels=["queue"]
        )
        for queue in (ARCHIVE_QUEUE, SUBMIT_QUEUE):
            family.add_metric([queue], float(broker.llen(queue)))
        return family
