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
