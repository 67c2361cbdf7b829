"""Fixtures for broker tests: webhook replicas under gunicorn, signed deliveries like EventBridge.

The signing identity and its certificate host are the webhook tests' own fixtures (imported
here so pytest registers them for this package too).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest

from asr_ingest.stack import Child, Stack
from asr_ingest.starters import free_port, webhook_spec
from tests.support import task_events as te
from tests.support.eventbridge_signer import CertificateHost, Signer
from tests.support.result_server import ResultServer
from tests.webhook import conftest as webhook_fixtures
from tests.webhook.conftest import TARGET_URL, cert_url_regex

# The webhook tests' fixtures, registered for this package by being bound here.
identity = webhook_fixtures.identity
cert_host_session = webhook_fixtures.cert_host_session
cert_host = webhook_fixtures.cert_host
signer = webhook_fixtures.signer

StartWebhook = Callable[..., Child]


@pytest.fixture
def start_webhook(cert_host: CertificateHost, tmp_path: Path) -> Iterator[StartWebhook]:
    """Starts a webhook replica (``gunicorn webhook.wsgi:app``, 2 workers) with ``env``;
    ``app`` replaces ``webhook.wsgi:app``. All replicas stop after the test."""
    stack = Stack(sink=lambda _line: None, log_dir=tmp_path / "logs", handle_signals=False)
    count = iter(range(100))

    def start(env: dict[str, str], app: str | None = None) -> Child:
        full = {
            "WEBHOOK_PUBLIC_URL": TARGET_URL,
            "EVENTBRIDGE_CERT_URL_REGEX": cert_url_regex(cert_host),
            "SSL_CERT_FILE": str(cert_host.ca_file),
            "LOG_FORMAT": "json",
            **env,
        }
        spec = webhook_spec(free_port(), full, name=f"web{next(count)}")
        if app is not None:
            spec = replace(spec, argv=[app if a == "webhook.wsgi:app" else a for a in spec.argv])
        return stack.start(spec)

    yield start
    stack.stop_all()


def task_body(result_server: ResultServer, task_id: str) -> bytes:
    """A finished fun-asr task's event with one result file served by ``result_server``."""
    url = result_server.add(f"/r/{task_id}.json", te.result_file(task_id, words=5))
    body = te.event(task_id, "fun-asr", te.batch_output(task_id, [te.ok(url)]), event_id=task_id)
    return body


@dataclass
class Deliveries:
    """What EventBridge saw: every answer's status, and the tasks acknowledged with a 200."""

    statuses: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    acknowledged: set[str] = field(default_factory=set)
    answers: list[tuple[float, int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, task_id: str, status: int, outcome: str) -> None:
        with self.lock:
            self.answers.append((time.monotonic(), status, task_id))
            self.statuses[status] += 1
            self.outcomes[outcome] += 1
            if status == 200:
                self.acknowledged.add(task_id)


def deliver_until_ok(
    url: str,
    signer: Signer,
    task_id: str,
    body: bytes,
    seen: Deliveries,
    *,
    retry_s: float = 0.25,
    give_up_s: float = 120.0,
) -> None:
    """POST freshly signed deliveries of ``body`` until one is answered 200, like EventBridge
    (which retries a 5xx or a connection error); records every answer in ``seen``."""
    deadline = time.monotonic() + give_up_s
    while True:
        try:
            response = httpx.post(
                f"{url}/callbacks/eventbridge",
                content=body,
                headers=signer.headers(body),
                timeout=10,
            )
            status = response.status_code
            outcome = response.json().get("status") or response.json().get("error", "")
        except httpx.HTTPError as exc:
            status, outcome = 0, type(exc).__name__
        seen.record(task_id, status, str(outcome))
        if status == 200:
            return
        assert status >= 500 or status == 0, f"{task_id}: {status} {outcome}"
        assert time.monotonic() < deadline, f"{task_id}: no 200 within {give_up_s} s"
        time.sleep(retry_s)


def manifests(root: Path) -> dict[str, dict[str, object]]:
    """task_id → manifest of every task archived under ``root``."""
    found = {}
    for path in root.glob("*/manifest.json"):
        try:
            found[path.parent.name] = json.loads(path.read_text())
        except ValueError:  # being written
            continue
    return found
