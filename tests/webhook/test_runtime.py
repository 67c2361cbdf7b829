"""Process-level behaviour of the webhook: GC freeze at the entrypoint, log writes, metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from core.logs import configure_logging
from webhook.metrics import WebhookMetrics

REPO_ROOT = Path(__file__).resolve().parents[2]


class RecordingStream:
    """A text stream that keeps each ``write`` call apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_wsgi_entrypoint_freezes_startup_objects() -> None:
    """Importing ``webhook.wsgi`` builds the app, then moves its objects out of the GC's reach."""
    env = {
        **os.environ,
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "WEBHOOK_PUBLIC_URL": "https://hooks.example.test/callbacks/eventbridge",
        "LOG_FORMAT": "json",
    }
    code = "import gc, webhook.wsgi; print(gc.get_freeze_count())"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, check=True
    )
    assert int(done.stdout.decode().splitlines()[-1]) > 10_000


def test_log_line_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log line and its newline reach stdout in one write, so workers' lines never interleave."""
    stream = RecordingStream()
    monkeypatch.setattr(sys, "stdout", stream)
    configure_logging("json")
    structlog.get_logger("webhook.delivery").info("delivery", outcome="accepted")
    assert len(stream.writes) == 1 and stream.writes[0].endswith("}\n")
    assert json.loads(stream.writes[0])["outcome"] == "accepted"


def test_metrics_count_each_label_set_apart() -> None:
    """Repeated observations accumulate per (outcome, reason); label sets stay separate."""
    metrics = WebhookMetrics()
    for outcome, reason in [("accepted", ""), ("accepted", ""), ("rejected", "bad_signature")]:
        metrics.observe(outcome, reason, 0.002)
    text = metrics.exposition()[0].decode()
    assert 'webhook_deliveries_total{outcome="accepted",reason=""} 2.0' in text
    assert 'webhook_deliveries_total{outcome="rejected",reason="bad_signature"} 1.0' in text
    assert 'webhook_delivery_handling_seconds_count{outcome="accepted"} 2.0' in text
