"""Prometheus metrics of the worker (prometheus-client), multi-process safe.

Metric objects live on prometheus-client's default registry, as its multi-process mode
requires: when ``PROMETHEUS_MULTIPROC_DIR`` is set in a worker's environment (an empty
directory shared by the processes that should be summed, cleared before they start), every
value is written to memory-mapped files there, and :func:`exposition` (or any process running
:class:`~prometheus_client.multiprocess.MultiProcessCollector` on that directory, e.g. the
webhook's ``/metrics``) sums them. Only counters and histograms are used, so no live-gauge
clean-up is needed when a process exits; states (the account breaker, backlogs, dead letters
waiting) are read from Redis at scrape time instead (:mod:`core.gauges`).

Every metric is registered on first use, under one lock (never at import: entry points decide).
:func:`prime` creates the labelled children whose label values are known in advance at 0 when
the worker starts serving metrics, so alerts on rare events (throttling, reconciled tasks,
breaker transitions) see a series from the start instead of none.

Labels stay low-cardinality, never a ``task_id``: ``destination`` is the destination kind
(``file``, ``s3``, ``oss``), ``reason`` an error reason of :mod:`core.errors`, ``outcome`` a
task outcome, ``code`` a DashScope error code from a fixed set (else ``other``), ``bucket``
a rate-limit bucket (``query``, ``submit:<family>``). Names and meanings: `docs/metrics.md`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

from core.errors import PipelineError
from core.events import parse_event
from core.store import Receipt

SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
LAG_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
LIFETIME_BUCKETS = (0, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200, 64800, 86400)
WAIT_BUCKETS = (0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

THROTTLING_CODES = ("Throttling", "Throttling.RateQuota", "Throttling.AllocationQuota")
"""DashScope's throttling codes (`docs/dashscope-transcription.md`, errors); any other code of
a 429 answer is counted as ``other``, so a server cannot grow the label set."""
OPERATIONS = ("submit", "query", "list")
"""DashScope calls: ``POST .../transcription``, ``GET /tasks/{id}``, ``GET /tasks``."""
ACCOUNT_CODES = ("Arrearage", "Throttling.AllocationQuota")
"""Codes that open the account breaker (:mod:`worker.submission.breaker`)."""
RECONCILE_PASSES = ("account", "due")
"""Reconciliation passes (:mod:`worker.submission.reconcile`)."""


@dataclass(frozen=True)
class _WorkerMetrics:
    files: Counter
    bytes: Counter
    failures: Counter
    task_seconds: Histogram
    lag_seconds: Histogram
    link_left_seconds: Histogram
    restored: Counter
    receipt_lag_seconds: Histogram
    dead_letters: Counter
    throttled: Counter
    tokens: Counter
    wait_seconds: Histogram
    breaker_transitions: Counter
    reconciled: Counter
    notify_sent: Counter
    notify_failures: Counter


_REGISTERING = threading.Lock()


def _metrics() -> _WorkerMetrics:
    """The metrics, registered on first use (never at import: entry points decide).

    Thread-safe: a task's files run in parallel, and two first uses at once would register
    every metric twice (``DuplicateTimeseries``), failing those files.
    """
    with _REGISTERING:
        return _registered()


@cache
def _registered() -> _WorkerMetrics:
    return _WorkerMetrics(**_archive_metrics(), **_dashscope_metrics(), **_pipeline_metrics())


def _archive_metrics() -> dict[str, Any]:
    return {
        "files": Counter(
            "asr_archive_files", "Result files archived, by destination kind.", ["destination"]
        ),
        "bytes": Counter(
            "asr_archive_bytes", "Result bytes archived, by destination kind.", ["destination"]
        ),
        "failures": Counter(
            "asr_archive_failures", "Archive failures (files or tasks) by error reason.", ["reason"]
        ),
        "task_seconds": Histogram(
            "asr_archive_task_seconds",
            "Duration of one archive task run, seconds, by outcome.",
            ["outcome"],
            buckets=SECONDS_BUCKETS,
        ),
        "lag_seconds": Histogram(
            "asr_archive_lag_seconds",
            "From the event's receipt to its manifest being written, seconds.",
            buckets=LAG_BUCKETS,
        ),
        "link_left_seconds": Histogram(
            "asr_archive_link_left_seconds",
            "Lifetime left of a result link when its download starts, seconds (<= 0: expired).",
            buckets=LIFETIME_BUCKETS,
        ),
        "restored": Counter(
            "asr_worker_restored_messages",
            "Unacknowledged messages of dead workers put back on their queues.",
        ),
    }


def _dashscope_metrics() -> dict[str, Any]:
    return {
        "throttled": Counter(
            "asr_dashscope_throttled",
            "DashScope 429 answers, by operation and error code.",
            ["operation", "code"],
        ),
        "tokens": Counter(
            "asr_ratelimit_tokens",
            "Rate-limit tokens granted, by bucket (query budget, submission per family).",
            ["bucket"],
        ),
        "wait_seconds": Histogram(
            "asr_ratelimit_wait_seconds",
            "Time a caller waited for a rate-limit token, seconds, by bucket and outcome.",
            ["bucket", "outcome"],
            buckets=WAIT_BUCKETS,
        ),
        "breaker_transitions": Counter(
            "asr_dashscope_breaker_transitions",
            "Account circuit breaker state changes, by new state and DashScope code.",
            ["state", "code"],
        ),
    }


def _pipeline_metrics() -> dict[str, Any]:
    return {
        "receipt_lag_seconds": Histogram(
            "asr_event_receipt_lag_seconds",
            "From the task's end_time to its receipt, seconds, by receipt source.",
            ["source"],
            buckets=LAG_BUCKETS,
        ),
        "dead_letters": Counter(
            "asr_dead_letters_written",
            "Dead letters written, by kind (archive, notify) and error reason.",
            ["kind", "reason"],
        ),
        "reconciled": Counter(
            "asr_reconcile_tasks_found",
            "Finished tasks without a receipt found and archived by reconciliation, by pass.",
            ["pass"],
        ),
        "notify_sent": Counter("asr_notify_sent", "Announcements answered 2xx by NOTIFY_URL."),
        "notify_failures": Counter(
            "asr_notify_failures", "Failed announcement attempts, by error reason.", ["reason"]
        ),
    }


def prime() -> None:
    """Create, at 0, the children whose label values are known, and the unlabelled metrics.

    Called when the worker starts serving metrics (:mod:`worker.app`): a rare event's
    counter then exists before the first event, so ``rate()`` and ``absent()`` behave.
    """
    found = _metrics()
    for operation in OPERATIONS:
        for code in (*THROTTLING_CODES, "other"):
            found.throttled.labels(operation=operation, code=code)
    for state in ("open", "closed"):
        for code in ACCOUNT_CODES:
            found.breaker_transitions.labels(state=state, code=code)
    for name in RECONCILE_PASSES:
        found.reconciled.labels(**{"pass": name})
    found.tokens.labels(bucket="query")
    for outcome in ("granted", "timeout"):
        found.wait_seconds.labels(bucket="query", outcome=outcome)


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


def receipt_lag(receipt: Receipt, *, attempt: int, replay: bool) -> None:
    """Record the lag from the task's ``end_time`` to ``receipt`` (seconds), once per task.

    Called when a worker holds the task's lease; counted only when the receipt has not been
    worked on yet (state ``received``/``enqueued``, first attempt, not a replay), so retries
    and duplicate messages do not count it again. Events without a readable ``end_time``
    (`docs/dashscope-transcription.md`: time fields are often malformed) are not counted.
    """
    if attempt != 1 or replay or receipt.state not in ("received", "enqueued"):
        return
    try:
        ended = parse_event(receipt.body).end_time
    except PipelineError:
        return
    if ended is not None:
        lag = max(0.0, receipt.received_at - ended)
        _metrics().receipt_lag_seconds.labels(source=receipt.source).observe(lag)


def dead_letter_written(kind: str, reason: str) -> None:
    """Count one dead letter of ``kind`` (``archive``, ``notify``) written with ``reason``."""
    _metrics().dead_letters.labels(kind=kind, reason=reason).inc()


def dashscope_throttled(operation: str, code: str) -> None:
    """Count one 429 answer to ``operation`` (``submit``, ``query``, ``list``) with ``code``."""
    label = code if code in THROTTLING_CODES else "other"
    _metrics().throttled.labels(operation=operation, code=label).inc()


def token_granted(bucket: str) -> None:
    """Count one rate-limit token granted from ``bucket``."""
    _metrics().tokens.labels(bucket=bucket).inc()


def token_wait(bucket: str, seconds: float, *, granted: bool) -> None:
    """Record ``seconds`` waited for a token of ``bucket``: ``granted`` or timed out."""
    outcome = "granted" if granted else "timeout"
    _metrics().wait_seconds.labels(bucket=bucket, outcome=outcome).observe(seconds)


def breaker_transition(state: str, code: str) -> None:
    """Count the account breaker moving to ``state`` (``open``/``closed``) for ``code``."""
    _metrics().breaker_transitions.labels(state=state, code=code).inc()


def tasks_reconciled(pass_name: str, count: int = 1) -> None:
    """Count ``count`` tasks found without a receipt by reconciliation pass ``pass_name``."""
    _metrics().reconciled.labels(**{"pass": pass_name}).inc(count)


def notify_sent() -> None:
    """Count one announcement answered 2xx."""
    _metrics().notify_sent.inc()


def notify_failed(reason: str) -> None:
    """Count one failed announcement attempt with ``reason``."""
    _metrics().notify_failures.labels(reason=reason).inc()


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
