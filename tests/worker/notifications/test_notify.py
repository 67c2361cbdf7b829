"""Announcements of archived tasks: payload, Standard Webhooks signatures, retries, dead letters.

Signatures are checked with the ``standardwebhooks`` library's own verifier; the worker tests
run a real Celery worker archiving to a local directory and posting to a local receiver.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import redis
from standardwebhooks import Webhook

from core.queues import ARCHIVE_QUEUE, ARCHIVE_TASK
from core.settings import load_settings
from core.store import ReceiptStore
from tests.fixtures.sandbox import CallbackReceiver
from tests.fixtures.worker import WorkerFactory, wait_until
from tests.support import task_events as te
from tests.support.result_server import ResultServer
from worker import create_celery
from worker.archiving.dlq import DeadLetters
from worker.notifications.payload import announcement, webhook_id
from worker.notifications.sender import Notifier
from worker.notifications.service import DLQ_KEY, RETRY_MAX_SECONDS, backoff_seconds

SECRET = "whsec_" + base64.b64encode(b"a test secret of 24 bytes").decode()
MANIFEST = {
    "task_id": "t-1",
    "model": "fun-asr",
    "task_status": "SUCCEEDED",
    "archive_status": "partial",
    "files": [
        {"index": 0, "subtask_status": "SUCCEEDED", "key": "t-1/results/0000.json", "error": None,
         "media": {"path": "talks/a.wav", "sha256": "ab", "bytes": 3}},
        {"index": 1, "subtask_status": "SUCCEEDED", "key": None,
         "error": {"reason": "result_not_json", "message": "x"}, "media": None},
    ],
}  # fmt: skip


def test_announcement_names_every_destination_and_file() -> None:
    """The body follows the contract: type, manifest URLs, per-file keys, source path, error."""
    body = announcement(MANIFEST, ["file:///a", "s3://b/p/"], "2026-01-01T00:00:00Z")
    assert body["type"] == "transcription.archived"
    data = body["data"]
    assert data["manifest"] == ["file:///a/t-1/manifest.json", "s3://b/p/t-1/manifest.json"]
    assert data["files"][0] == {
        "index": 0,
        "subtask_status": "SUCCEEDED",
        "source_path": "talks/a.wav",
        "keys": ["file:///a/t-1/results/0000.json", "s3://b/p/t-1/results/0000.json"],
        "error": None,
    }
    assert data["files"][1]["keys"] == [] and data["files"][1]["error"] == "result_not_json"


def test_sender_signature_verifies_with_the_library(callback_receiver: CallbackReceiver) -> None:
    """A posted announcement carries webhook-id/-timestamp/-signature the verifier accepts."""
    notifier = Notifier(callback_receiver.url, SECRET)
    notifier.send(webhook_id("t-1"), {"hello": "world"})
    notifier.close()
    headers, body = callback_receiver.requests[0]
    assert headers["webhook-id"] == "msg_asr_t-1"
    assert Webhook(SECRET).verify(body, headers) == {"hello": "world"}


def test_bad_secret_is_one_setting_error() -> None:
    """A NOTIFY_SECRET that is not whsec_ + Base64 fails at load, naming the field."""
    with pytest.raises(ValueError, match="notify_secret"):
        load_settings(notify_secret="whsec_not base64!")


def test_default_attempts_span_about_an_hour() -> None:
    """The default 12 attempts wait at most about 1 h in all (backoff caps), at least minutes."""
    settings = load_settings()
    assert settings.notify_max_attempts == 12
    caps = [min(RETRY_MAX_SECONDS, 5.0 * 2**n) for n in range(settings.notify_max_attempts - 1)]
    assert 3000 < sum(caps) < 4000
    assert all(0 <= backoff_seconds(n) <= cap for n, cap in enumerate(caps))


@pytest.fixture
def notify_env(
    tmp_path: Path, result_server: ResultServer, callback_receiver: CallbackReceiver
) -> dict[str, str]:
    """A worker archiving to a directory and announcing to the receiver."""
    return {
        "ARCHIVE_URLS": (tmp_path / "archive").as_uri(),
        "RESULT_URL_REGEX": result_server.url_regex,
        "NOTIFY_URL": callback_receiver.url,
        "NOTIFY_SECRET": SECRET,
    }


def deliver(client: redis.Redis, task_id: str, url: str) -> None:
    """Store a one-file event for ``task_id`` and enqueue its archive task."""
    body = te.event(task_id, "fun-asr", te.batch_output(task_id, [te.ok(url)]))
    ReceiptStore(client, 600).claim(task_id, body, event_id="e1")
    create_celery().send_task(ARCHIVE_TASK, args=[task_id], queue=ARCHIVE_QUEUE)


def test_archived_task_is_announced_once_after_retries(
    notify_env: dict[str, str],
    celery_worker_factory: WorkerFactory,
    redis_client: redis.Redis,
    result_server: ResultServer,
    callback_receiver: CallbackReceiver,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two 503s, then 200: one announcement accepted, every attempt with the same webhook-id;
    a second archive message for the task announces nothing more."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    callback_receiver.statuses[:] = [503, 503]
    worker = celery_worker_factory(notify_env)
    deliver(redis_client, "t-ok", result_server.add("/r/ok.json", te.result_file()))
    wait_until(lambda: redis_client.exists("asr:notify:sent:t-ok"), 60, "announcement")
    ids = {headers["webhook-id"] for headers, _ in callback_receiver.requests}
    assert len(callback_receiver.requests) == 3 and ids == {"msg_asr_t-ok"}
    headers, body = callback_receiver.requests[-1]
    data = Webhook(SECRET).verify(body, headers)["data"]
    assert (data["task_id"], data["archive_status"]) == ("t-ok", "complete")
    create_celery().send_task(ARCHIVE_TASK, args=["t-ok"], queue=ARCHIVE_QUEUE)
    worker.wait_for("'already_sent'")  # the second archive run's announcement was skipped
    assert len(callback_receiver.requests) == 3


def test_rejected_announcement_is_a_dead_letter(
    notify_env: dict[str, str],
    celery_worker_factory: WorkerFactory,
    redis_client: redis.Redis,
    result_server: ResultServer,
    callback_receiver: CallbackReceiver,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 400 from NOTIFY_URL dead-letters the announcement at once, apart from archive ones."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    callback_receiver.statuses[:] = [400]
    celery_worker_factory(notify_env)
    deliver(redis_client, "t-no", result_server.add("/r/no.json", te.result_file()))
    letter = wait_until(lambda: DeadLetters(redis_client, key=DLQ_KEY).get("t-no"), 60, "letter")
    assert letter.reason == "notify_rejected" and letter.attempts == 1  # type: ignore[attr-defined]
    assert DeadLetters(redis_client).get("t-no") is None
    assert len(callback_receiver.requests) == 1
