"""The one-round-trip intake: its Celery message, a real worker consuming it, path selection."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from asr_ingest.embedded import EmbeddedRedis
from core.broker import publisher
from core.settings import Settings, broker_url_for, load_settings
from core.store import PENDING_KEY, ReceiptStore
from tests.fixtures.worker import WorkerFactory, wait_until
from tests.support import task_events as te
from tests.support.eventbridge_signer import Signer
from tests.support.result_server import ResultServer
from tests.webhook.conftest import archive_messages, changed
from webhook import create_app
from webhook.admission import Envelope
from webhook.errors import StoreUnavailable
from webhook.intake import AtomicIntake, PublishingIntake
from webhook.messages import ArchiveMessages, broker_is_redis_store
from webhook.views import EXTENSION

CALLBACK = "/callbacks/eventbridge"
BODY = te.result_file(words=50)


def decoded(raw: bytes | str) -> dict[str, Any]:
    """A stored kombu message with its base64 body decoded into ``body``."""
    message: dict[str, Any] = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def without_ids(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` minus the per-message ids (Celery task id thrice, delivery tag)."""
    headers = {k: v for k, v in message["headers"].items() if k not in ("id", "root_id")}
    skip = ("correlation_id", "delivery_tag")
    properties = {k: v for k, v in message["properties"].items() if k not in skip}
    return {**message, "headers": headers, "properties": properties}


def test_rendered_message_equals_celery_publish(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """The pushed document is what send_task stores on the Redis list, but for fresh ids."""
    celery = publisher(settings)
    celery.send_task("asr_ingest.archive", args=["t-same"], queue="archive")
    published = decoded(redis_client.rpop("archive"))  # type: ignore[arg-type]  # bytes here
    messages = ArchiveMessages(celery)
    first, second = (decoded(messages.render("t-same")) for _ in range(2))
    assert messages.queue_key == "archive"
    assert without_ids(first) == without_ids(published)
    assert first["body"] == [["t-same"], {}, published["body"][2]]
    assert first["headers"]["argsrepr"] == "['t-same']"
    ids = {first["headers"]["id"], first["headers"]["root_id"]}
    assert ids == {first["properties"]["correlation_id"]}
    assert uuid.UUID(first["properties"]["delivery_tag"]).version == 4
    assert uuid.UUID(first["headers"]["id"]).version == 4
    assert first["headers"]["id"] != first["properties"]["delivery_tag"]
    assert first["headers"]["id"] != second["headers"]["id"]
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]


def test_kombu_consumer_requeues_rendered_message(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """kombu's own consumer reads a pushed message, and a reject with requeue restores it."""
    celery = publisher(settings)
    messages = ArchiveMessages(celery)
    pushed = messages.render("t-requeue")
    redis_client.lpush(messages.queue_key, pushed)
    with celery.connection_for_write() as connection:
        channel = connection.default_channel
        message = channel.basic_get("archive", no_ack=False)
        assert message.headers["task"] == "asr_ingest.archive"
        assert message.decode() == [["t-requeue"], {}, decoded(pushed)["body"][2]]
        assert redis_client.llen("archive") == 0 and redis_client.hlen("unacked") == 1
        message.reject(requeue=True)
    assert redis_client.hlen("unacked") == 0
    restored, original = decoded(redis_client.rpop("archive")), decoded(pushed)  # type: ignore[arg-type]  # bytes here
    assert restored["headers"].pop("redelivered") is True  # kombu marks a restored message
    assert restored["properties"]["delivery_info"].pop("redelivered") is True
    assert restored == original and redis_client.llen("archive") == 0


def test_render_refuses_task_id_needing_escapes(settings: Settings) -> None:
    """A task_id with quotes or backslashes is refused rather than spliced into the JSON."""
    messages = ArchiveMessages(publisher(settings))
    with pytest.raises(ValueError, match="escaping"):
        messages.render('t"1\\')


def test_global_keyprefix_prefixes_the_list(settings: Settings) -> None:
    """kombu's global_keyprefix transport option is honoured in the list key."""
    celery = publisher(settings)
    celery.conf.broker_transport_options = {"global_keyprefix": "pfx:"}
    assert ArchiveMessages(celery).queue_key == "pfx:archive"


def signed_post(client: FlaskClient, signer: Signer, body: bytes) -> tuple[int, Any]:
    """POST one signed delivery; the status and JSON answer."""
    response = client.post(CALLBACK, data=body, headers=signer.headers(body))
    return response.status_code, response.get_json()


def test_real_worker_archives_fast_path_messages(
    settings: Settings,
    signer: Signer,
    redis_client: redis.Redis,
    celery_worker_factory: WorkerFactory,
    result_server: ResultServer,
    tmp_path: Path,
) -> None:
    """A real Celery worker runs the archive task from messages the one-trip intake pushed."""
    app = create_app(settings)
    assert isinstance(app.extensions[EXTENSION].intake, AtomicIntake)
    client = app.test_client()
    url = result_server.add("/r/fast.json", BODY)
    bodies = {
        t: te.event(t, "fun-asr", te.batch_output(t, [te.ok(url)]), event_id=f"evt-{t}")
        for t in ("t-before", "t-after")
    }
    assert signed_post(client, signer, bodies["t-before"]) == (
        200,
        {"status": "accepted", "task_id": "t-before"},
    )
    env = {
        "ARCHIVE_URLS": (tmp_path / "archive").as_uri(),
        "RESULT_URL_REGEX": result_server.url_regex,
        "ARCHIVE_SPOOL_DIR": str(tmp_path),
        "DASHSCOPE_API_KEY": "sk-test",
    }
    worker = celery_worker_factory(env, concurrency=1)
    assert signed_post(client, signer, bodies["t-after"])[0] == 200
    store = ReceiptStore(redis_client, 600)

    def archived() -> bool:
        receipts = [store.load(t) for t in bodies]
        return all(r is not None and r.state == "archived" for r in receipts)

    wait_until(archived, what="both receipts archived")
    for task_id in bodies:
        manifest = json.loads((tmp_path / "archive" / task_id / "manifest.json").read_text())
        assert (manifest["task_id"], manifest["event_id"]) == (task_id, f"evt-{task_id}")
        assert (tmp_path / "archive" / task_id / "results/0000.json").read_bytes() == BODY
    log = worker.log()
    assert log.count("succeeded in") == 2 and "Traceback" not in log
    assert redis_client.llen("archive") == 0 and not redis_client.hlen("unacked")
    assert redis_client.zcard(PENDING_KEY) == 0


def test_redis_down_stores_and_pushes_nothing(private_redis: EmbeddedRedis) -> None:
    """Redis stopped: StoreUnavailable; once back, no receipt and no message exist."""
    settings = load_settings(redis_url=private_redis.url)
    client = redis.Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
    intake = AtomicIntake(ReceiptStore(client, 600), ArchiveMessages(publisher(settings)))
    event = Envelope(type="dashscope:System:AsyncTaskFinish", event_id="e", task_id="t-d", model="")
    private_redis.stop()
    with pytest.raises(StoreUnavailable):
        intake.take(event, b"{}")
    private_redis.start()
    assert not client.exists("asr:receipt:t-d") and client.llen("archive") == 0
    assert intake.take(event, b"{}") == "accepted"
    assert intake.take(event, b"{}") == "duplicate"
    assert client.llen("archive") == 1 and client.zcard(PENDING_KEY) == 0
    client.close()


def test_other_broker_database_uses_publish_path(
    settings: Settings, signer: Signer, redis_client: redis.Redis, redis_url: str
) -> None:
    """A broker on another database of the same server: claim, send_task, mark; one message."""
    other_db = broker_url_for(redis_url).replace("virtual_host=0", "virtual_host=1")
    app = create_app(changed(settings, celery_broker_url=other_db))
    assert isinstance(app.extensions[EXTENSION].intake, PublishingIntake)
    body = te.event("t-other", "fun-asr", None)
    assert signed_post(app.test_client(), signer, body)[0] == 200
    receipt = ReceiptStore(redis_client, 600).load("t-other")
    assert receipt is not None and receipt.state == "enqueued"
    assert redis_client.llen("archive") == 0 and redis_client.zcard(PENDING_KEY) == 0
    broker = redis.Redis.from_url(redis_url.replace("db=0", "db=1"))
    assert archive_messages(broker) == [
        {"task": "asr_ingest.archive", "args": ["t-other"], "kwargs": {}}
    ]
    broker.close()


@pytest.mark.parametrize(
    ("redis_url", "broker_url", "same"),
    [
        ("redis://h:6379/0", None, True),
        ("unix:///run/r.sock?db=2", None, True),
        ("redis://h:6379/0", "redis://user:pw@h/", True),
        ("redis://h/3", "redis://h:6379/3", True),
        ("unix:///run/r.sock?db=2", "redis+socket:///run/r.sock?virtual_host=2", True),
        ("redis://h:6379/0", "redis://h:6379/1", False),
        ("redis://h:6379/0", "redis://g:6379/0", False),
        ("redis://h:6379/0", "redis://h:6380/0", False),
        ("redis://localhost/0", "redis://127.0.0.1/0", False),
        ("redis://h:6379/0", "amqp://guest@h//", False),
        ("redis://h:6379/0", "sentinel://h:26379/0", False),
        ("redis://h:6379/0", "redis://h:6379/0;redis://g:6379/0", False),
        ("unix:///run/r.sock?db=0", "redis+socket:///run/other.sock", False),
    ],
)
def test_broker_is_redis_store(redis_url: str, broker_url: str | None, same: bool) -> None:
    """The one-trip path is chosen only when the broker is REDIS_URL's server and database."""
    settings = load_settings(redis_url=redis_url, celery_broker_url=broker_url)
    assert broker_is_redis_store(settings) is same
