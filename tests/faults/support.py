"""Helpers of the fault suite: one worker environment, deliveries, waits and measured times.

Every scenario runs real processes with the default settings except those it names (the
result URL pattern, destinations and spool directory are the test's own). Measured times are
printed as ``FAULT-TIME <scenario>: <seconds> s`` lines (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis

from core.queues import ARCHIVE_QUEUE, ARCHIVE_TASK
from core.settings import broker_url_for, load_settings
from core.store import ReceiptStore
from tests.support import task_events as te
from tests.support.result_server import ResultServer
from worker import AsrCelery, create_celery


def worker_env(result_server: ResultServer, archive_urls: list[str], spool: Path) -> dict[str, str]:
    """The environment of a fault-suite worker: only what the scenario must name."""
    spool.mkdir(parents=True, exist_ok=True)
    return {
        "ARCHIVE_URLS": ",".join(archive_urls),
        "RESULT_URL_REGEX": result_server.url_regex,
        "ARCHIVE_SPOOL_DIR": str(spool),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def producer(redis_url: str) -> AsrCelery:
    """A Celery app on ``redis_url``'s broker, used only to publish."""
    url = broker_url_for(redis_url)
    return create_celery(load_settings(redis_url=redis_url, celery_broker_url=url))


def deliver(client: redis.Redis, app: AsrCelery, task_id: str, urls: list[str]) -> None:
    """Store a Fun-ASR event with one file per URL and publish its archive message."""
    body = te.event(task_id, "fun-asr", te.batch_output(task_id, [te.ok(u) for u in urls]))
    store = ReceiptStore(client, 600)
    store.claim(task_id, body, event_id=f"evt-{task_id}")
    app.send_task(ARCHIVE_TASK, args=[task_id], queue=ARCHIVE_QUEUE)
    store.mark_enqueued(task_id)


def state(client: redis.Redis, task_id: str) -> str | None:
    """The receipt state of ``task_id`` (None without a receipt)."""
    receipt = ReceiptStore(client, 600).load(task_id)
    return receipt.state if receipt else None


def manifest(root: Path, task_id: str) -> dict[str, Any] | None:
    """The manifest of ``task_id`` under the local archive ``root``, or None."""
    path = root / task_id / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def report(scenario: str, seconds: float) -> float:
    """Print one measured time for the results table; returns it."""
    print(f"FAULT-TIME {scenario}: {seconds:.1f} s")
    return seconds


class Clock:
    """Seconds since construction (monotonic)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.started
