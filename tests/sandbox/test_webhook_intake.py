"""The sandbox's pushes go through the real webhook: verified, accepted once, then duplicates."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import redis
from werkzeug.serving import BaseWSGIServer, make_server

from core.settings import load_settings
from sandbox.server import Sandbox
from tests.fixtures.sandbox import MediaServer, wait_for
from tests.fixtures.worker import broker_url_for
from tests.sandbox.test_callbacks import submit
from webhook import create_app


@pytest.fixture
def webhook_server() -> Iterator[BaseWSGIServer]:
    """A bound (not yet serving) werkzeug server; the test gives it the webhook app."""
    server = make_server("127.0.0.1", 0, lambda environ, start: [], threaded=True)
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_webhook_accepts_sandbox_events_once(
    make_sandbox: Callable[..., Sandbox],
    webhook_server: BaseWSGIServer,
    redis_url: str,
    redis_client: redis.Redis,
    media_server: MediaServer,
    version: str,
) -> None:
    """Three copies of one task's event: the webhook answers accepted once, then duplicate."""
    target = f"http://127.0.0.1:{webhook_server.server_port}/callbacks/eventbridge"
    box = make_sandbox(
        callback_url=target,
        signature_version=version,
        signature_token="t0k",
        duplicates=2,
        duplicate_spread_seconds=0.3,
    )
    settings = load_settings(
        redis_url=redis_url,
        celery_broker_url=broker_url_for(redis_url),
        webhook_public_url=target,
        eventbridge_cert_url_regex=box.cert_url_regex,
        eventbridge_signature_token="t0k",
        log_format="json",
    )
    webhook_server.app = create_app(settings)
    threading.Thread(target=webhook_server.serve_forever, args=(0.05,), daemon=True).start()
    task_id = submit(box, "fun-asr", [media_server.url_for("hello.wav")])
    deliveries = wait_for(lambda: len(box.state()["deliveries"]) >= 3 and box.state())["deliveries"]
    assert [d["status_code"] for d in deliveries] == [200, 200, 200]
    answers = sorted(d["answer"]["status"] for d in deliveries)
    assert answers == ["accepted", "duplicate", "duplicate"]
    assert {d["answer"]["task_id"] for d in deliveries} == {task_id}
    assert redis_client.llen("archive") == 1


def _serve_webhook(server: BaseWSGIServer, redis_url: str, target: str, box: Sandbox) -> None:
    settings = load_settings(
        redis_url=redis_url,
        celery_broker_url=broker_url_for(redis_url),
        webhook_public_url=target,
        eventbridge_cert_url_regex=box.cert_url_regex,
        log_format="json",
    )
    server.app = create_app(settings)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()


def test_webhook_accepts_results_free_events(
    make_sandbox: Callable[..., Sandbox],
    webhook_server: BaseWSGIServer,
    redis_url: str,
    redis_client: redis.Redis,
    media_server: MediaServer,
) -> None:
    """A transcription event with contain_result false is accepted and queued once."""
    target = f"http://127.0.0.1:{webhook_server.server_port}/callbacks/eventbridge"
    box = make_sandbox(callback_url=target, results_in_events=False)
    _serve_webhook(webhook_server, redis_url, target, box)
    task_id = submit(box, "fun-asr", [media_server.url_for("hello.wav")])
    (delivery,) = wait_for(lambda: box.state()["deliveries"])
    assert delivery["answer"] == {"status": "accepted", "task_id": task_id}
    assert redis_client.llen("archive") == 1


def test_webhook_ignores_foreign_events(
    make_sandbox: Callable[..., Sandbox],
    webhook_server: BaseWSGIServer,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """Signed image/video events are answered 200 ignored (not_transcription); nothing is queued."""
    target = f"http://127.0.0.1:{webhook_server.server_port}/callbacks/eventbridge"
    box = make_sandbox(callback_url=target, foreign_events=2, foreign_event_interval_seconds=0.05)
    _serve_webhook(webhook_server, redis_url, target, box)
    deliveries = wait_for(lambda: len(box.state()["deliveries"]) >= 2 and box.state())["deliveries"]
    assert [d["status_code"] for d in deliveries] == [200, 200]
    answers = [(d["answer"]["status"], d["answer"].get("reason")) for d in deliveries]
    assert answers == [("ignored", "not_transcription")] * 2
    assert redis_client.llen("archive") == 0
