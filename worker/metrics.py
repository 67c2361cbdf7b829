"""Prometheus metrics of archiving (prometheus-client), multi-process safe.

Metric objects live on prometheus-client's default registry, as its multi-process mode
requires: when ``PROMETHEUS_MULTIPROC_DIR`` is set in a worker's environment (an empty
directory shared by the processes that should be summed, cleared before they start), every
value is written to memory-mapped files there, and :func:`exposition` (or any process running
:class:`~prometheus_client.multiprocess.MultiProcessCollector` on that directory, e.g. the
webhook's ``/metrics``) sums them. Only counters and histograms are used, so no live-gauge
clean-up is needed when a process exits.

Labels stay low-cardinality: ``destination`` is the destination kind (``file``, ``s3``,
``oss``), ``reason`` an error reason of :mod:`core.errors`, ``outcome`` a task outcome.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
LAG_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
LIFETIME_BUCKETS = (0, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200, 64800, 86400)


@dataclass(frozen=True)
class _ArchiveMetrics:
    files: Counter
    bytes: Counter
    failures: Counter
    task_seconds: Histogram
    lag_seconds: Histogram
    link_left_seconds: Histogram
    restored: Counter


_REGISTERING = threading.Lock()


def _metrics() -> _ArchiveMetrics:
    """The metrics, registered on first use (never at import: entry points decide).

    Thread-safe: a task's files run in parallel, and two first uses at once would register
    every metric twice (``DuplicateTimeseries``), failing those files.
    """
    with _REGISTERING:
        return _registered()


@cache
def _registered() -> _ArchiveMetrics:
    return _ArchiveMetrics(
        files=Counter(
            "asr_archive_files", "Result files archived, by destination kind.", ["destination"]
        ),
        bytes=Counter(
            "asr_archive_bytes", "Result bytes archived, by destination kind.", ["destination"]
        ),
        failures=Counter(
            "asr_archive_failures", "Archive failures (files or tasks) by error reason.", ["reason"]
        ),
        task_seconds=Histogram(
            "asr_archive_task_seconds",
            "Duration of one archive task run, seconds, by outcome.",
            ["outcome"],
            buckets=SECONDS_BUCKETS,
        ),
        lag_seconds=Histogram(
            "asr_archive_lag_seconds",
            "From the event's receipt to its manifest being written, seconds.",
            buckets=LAG_BUCKETS,
        ),
        link_left_seconds=Histogram(
            "asr_archive_link_left_seconds",
            "Lifetime left of a result link when its download starts, seconds (<= 0: expired).",
            buckets=LIFETIME_BUCKETS,
        ),
        restored=Counter(
            "asr_worker_restored_messages",
            "Unacknowledged messages of dead workers put back on their queues.",
        ),
    )


def file_archived(destination: str, size: int) -> None:
    """Count one result file of ``size`` bytes written to a ``destination`` kind."""
    _metrics().files.labels(destination=destination).inc()
    _metrics().bytes.labels(destination=destination).inc(size)


def failure(reason: str) -> None:
    """Count one failure with ``reason``."""
    _metrics().failures.labels(reason=reason).inc()


def task_finished(outcome: str, seconds: float) -> None:
    """Record one task run's ``outcome`` and duration in seconds."""
    _metrics().task_seconds.labels(outcome=outcome).observe(seconds)


def archived_lag(seconds: float) -> None:
    """Record the event-to-archive lag of one task, seconds."""
    _metrics().lag_seconds.observe(max(0.0, seconds))


def link_lifetime_left(seconds: float) -> None:
    """Record how long a result link had left when its download started, seconds."""
    _metrics().link_left_seconds.observe(seconds)


def messages_restored(count: int) -> None:
    """Count ``count`` messages of dead workers put back on their queues."""
    _metrics().restored.inc(count)


def _registry(multiproc_dir: str | None) -> CollectorRegistry:
    if multiproc_dir is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]  # untyped in prometheus-client
    return registry


def exposition(multiproc_dir: str | None = None) -> bytes:
    """Prometheus text: summed over ``multiproc_dir`` when given, else this process's values."""
    return generate_latest(_registry(multiproc_dir))


def serve(port: int, multiproc_dir: str | None = None) -> None:
    """Serve :func:`exposition` over HTTP on ``port`` (all interfaces) from a daemon thread.

    With the prefork pool, set ``multiproc_dir`` so the pool processes' values are summed.
    Raises :class:`OSError` when the port is taken.
    """
    start_http_server(port, registry=_registry(multiproc_dir))
