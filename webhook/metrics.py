"""Prometheus metrics of deliveries (prometheus-client), multi-process aware.

Labels are low-cardinality on purpose: ``outcome`` (``accepted``, ``duplicate``, ``ignored``,
``rejected``, ``unavailable``, ``error``) and ``reason`` (the error reasons of
:mod:`webhook.errors`, ``body_too_large``, or "" for a success); never a ``task_id``.

Under gunicorn each worker is a process of its own. When ``PROMETHEUS_MULTIPROC_DIR`` is set
(an empty directory, cleared before the server starts), prometheus-client writes every value to
memory-mapped files there and ``/metrics`` sums them across workers with
:class:`~prometheus_client.multiprocess.MultiProcessCollector`. Only counters and histograms are
used, so no ``child_exit`` hook is needed (that is for live gauges).

``webhook_certificate_keys_total`` counts, per process, each signing key the first time it is
fetched, labelled by the first 16 hex digits of its fingerprint and whether it is ``trusted``
(pinned, or no pins set): a new label is a key rotation to look at. Keys come only from trusted
certificate URLs, so the label set stays small.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as generate_latest_text
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class WebhookMetrics:
    """Delivery counters and the handling-time histogram, on a registry of their own.

    ``multiproc_dir`` is ``PROMETHEUS_MULTIPROC_DIR`` (None for a single process).
    """

    def __init__(self, multiproc_dir: str | None = None) -> None:
        self._multiproc_dir = multiproc_dir
        self._state: Collector | None = None
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "webhook_deliveries",
            "EventBridge deliveries by outcome and reason.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.handling_seconds = Histogram(
            "webhook_delivery_handling_seconds",
            "Time from request start to answer, seconds.",
            ["outcome"],
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=self.registry,
        )
        self.certificate_keys = Counter(
            "webhook_certificate_keys",
            "Signing keys seen for the first time by a process, by fingerprint prefix.",
            ["fingerprint", "trusted"],
            registry=self.registry,
        )
        # Labelled children by (outcome, reason): ``labels()`` validates and looks them up
        # under a lock on every call; the label sets are few and fixed.
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def observe(self, outcome: str, reason: str, seconds: float) -> None:
        """Count one delivery and record its handling time in seconds."""
        children = self._children.get((outcome, reason))
        if children is None:
            children = (
                self.deliveries.labels(outcome=outcome, reason=reason),
                self.handling_seconds.labels(outcome=outcome),
            )
            self._children[(outcome, reason)] = children
        children[0].inc()
        children[1].observe(seconds)

    def key_seen(self, fingerprint: str, trusted: bool) -> None:
        """Count a certificate key this process sees for the first time (hex ``fingerprint``)."""
        labels = {"fingerprint": fingerprint[:16], "trusted": "true" if trusted else "false"}
        self.certificate_keys.labels(**labels).inc()

    def add_state(self, collector: Collector) -> None:
        """Also expose ``collector`` (the pipeline's state gauges, :mod:`core.gauges`)."""
        self._state = collector
        self.registry.register(collector)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type (summed across workers)."""
        if self._multiproc_dir is None:
            return generate_latest_text(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._multiproc_dir)  # type: ignore[no-untyped-call]  # untyped in prometheus-client
        if self._state is not None:
            registry.register(self._state)
        return generate_latest_text(registry), CONTENT_TYPE_LATEST
