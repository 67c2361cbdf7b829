"""The archive service as plain functions: outcomes, the retry policy, dead letters, the sweep."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.errors import Reason
from core.media import Media, write_media
from core.settings import load_settings
from core.store import Receipt, ReceiptStore
from tests.support import task_events as te
from tests.support.result_server import Fault, ResultServer
from worker.archiving.destinations import open_destination
from worker.archiving.dlq import DeadLetters
from worker.archiving.fetch import ResultFetcher
from worker.archiving.lease import Holder, Lease
from worker.archiving.service import (
    EXPIRY_MARGIN_SECONDS,
    ArchiveService,
    RetryLater,
    retry_horizon,
)

BODY = te.result_file("a.wav", words=20)


@pytest.fixture
def service(
    redis_client: redis.Redis, result_server: ResultServer, tmp_path: Path
) -> Iterator[ArchiveService]:
    """A service archiving to a local directory, with the default attempts limit (6)."""
    settings = load_settings(archive_urls=[(tmp_path / "archive").as_uri()])
    spool = tmp_path / "spool"
    spool.mkdir()
    fetcher = ResultFetcher(
        re.compile(result_server.url_regex), max_bytes=100_000, spool_dir=str(spool)
    )
    queries: list[str] = []

    def query(task_id: str) -> dict[str, object]:
        queries.append(task_id)
        return {"output": {"task_status": "RUNNING"}}

    destination = open_destination(settings.archive_urls[0], settings)
    yield ArchiveService(settings, redis_client, [destination], fetcher, query)
    fetcher.close()


def receive(client: redis.Redis, task_id: str, url: str) -> None:
    """Store the event of a one-file Fun-ASR task whose result is at ``url``."""
    body = te.event(task_id, "fun-asr", te.batch_output(task_id, [te.ok(url)]))
    ReceiptStore(client, 600).claim(task_id, body, event_id="evt-1")


def manifest(tmp_path: Path, task_id: str) -> dict[str, object]:
    """The local manifest of ``task_id``."""
    loaded: dict[str, object] = json.loads(
        (tmp_path / "archive" / task_id / "manifest.json").read_bytes()
    )
    return loaded


def state(client: redis.Redis, task_id: str) -> str | None:
    """The receipt state of ``task_id``."""
    receipt = ReceiptStore(client, 600).load(task_id)
    return receipt.state if receipt else None


def test_archives_then_knows_it_is_done(
    service: ArchiveService, redis_client: redis.Redis, result_server: ResultServer, tmp_path: Path
) -> None:
    """A first attempt archives; a second finds the manifest and does nothing."""
    receive(redis_client, "t1", result_server.add("/r/t1.json", BODY))
    assert service.archive("t1", attempt=1) == "archived"
    assert state(redis_client, "t1") == "archived"
    assert manifest(tmp_path, "t1")["archive_status"] == "complete"
    assert service.archive("t1", attempt=1) == "already_archived"
    assert result_server.hits("/r/t1.json") == 1


def test_busy_while_another_holds_the_lease(
    service: ArchiveService, redis_client: redis.Redis, result_server: ResultServer
) -> None:
    """A task whose lease a live holder has is retried (never dropped), no later than the
    lease's remaining time, and untouched meanwhile."""
    receive(redis_client, "t2", result_server.add("/r/t2.json", BODY))
    assert Lease(redis_client, "t2", 60).acquire()
    with pytest.raises(RetryLater) as again:
        service.archive("t2", attempt=1)
    assert again.value.error.reason == Reason.LEASE_HELD
    assert 0 < again.value.countdown <= 60 + 1
    assert result_server.hits("/r/t2.json") == 0


def test_dead_holder_on_this_host_is_taken_over(
    service: ArchiveService, redis_client: redis.Redis, result_server: ResultServer
) -> None:
    """A lease whose holder process is gone on this host is taken over at once."""
    receive(redis_client, "t2b", result_server.add("/r/t2b.json", BODY))
    dead = Holder(socket.gethostname(), 2**22 + 7, "1", "token")  # above pid_max: no such pid
    redis_client.set("asr:archive:lease:t2b", dead.encode(), px=60_000)
    assert service.archive("t2b", attempt=1) == "archived"


def test_no_receipt_is_a_dead_letter(service: ArchiveService, redis_client: redis.Redis) -> None:
    """A message for a task with no stored event is dead-lettered as ``no_receipt``."""
    assert service.archive("ghost", attempt=1) == "dead"
    letter = DeadLetters(redis_client).get("ghost")
    assert letter is not None and letter.reason == Reason.NO_RECEIPT


def test_transient_failure_retries_until_the_links_expire(
    service: ArchiveService, redis_client: redis.Redis, result_server: ResultServer, tmp_path: Path
) -> None:
    """A 503 is retried (attempts are no limit) until the link's ``Expires`` less the margin;
    then the task is dead-lettered with the last reason and a manifest naming the file."""
    expires_in = EXPIRY_MARGIN_SECONDS + 1.5
    url = result_server.add(
        "/r/t3.json", BODY, faults=[Fault(status=503)] * 10, expires_in_s=expires_in
    )
    receive(redis_client, "t3", url)
    assert service.settings.archive_max_attempts is None
    with pytest.raises(RetryLater) as again:
        service.archive("t3", attempt=40)
    assert again.value.error.reason == Reason.RESULT_HTTP_5XX
    assert again.value.countdown <= 1.5
    assert redis_client.get("asr:archive:lease:t3") is None  # released for the retry
    time.sleep(1.6)
    assert service.archive("t3", attempt=41) == "dead"
    letter = DeadLetters(redis_client).get("t3")
    assert letter is not None and (letter.reason, letter.attempts) == (Reason.RESULT_HTTP_5XX, 41)
    files = manifest(tmp_path, "t3")["files"]
    assert isinstance(files, list) and files[0]["error"]["reason"] == "result_http_5xx"
    assert state(redis_client, "t3") == "dead"


def test_expired_link_is_result_expired_without_a_request(
    service: ArchiveService, redis_client: redis.Redis, result_server: ResultServer, tmp_path: Path
) -> None:
    """A link whose ``Expires`` passed is not requested; no fresh one: ``result_expired``."""
    receive(redis_client, "t3x", result_server.add("/r/t3x.json", BODY, expires_in_s=-5))
    assert service.archive("t3x", attempt=1) == "dead"
    letter = DeadLetters(redis_client).get("t3x")
    assert letter is not None and letter.reason == Reason.RESULT_EXPIRED
    assert result_server.hits("/r/t3x.json") == 0
    files = manifest(tmp_path, "t3x")["files"]
    assert isinstance(files, list) and files[0]["error"]["reason"] == "result_expired"


def test_retry_horizon_without_expires() -> None:
    """Without ``Expires`` the horizon is 24 h after ``data.end_time`` (China time), else
    24 h after the receipt."""
    body = te.event("h1", "fun-asr", te.batch_output("h1", [te.ok("https://x.aliyuncs.com/r")]))
    receipt = Receipt("h1", body, 1000.0, "e", "fun-asr", "eventbridge", "enqueued")
    assert retry_horizon(receipt) == 1000.0 + 86_400
    document = json.loads(body)
    document["data"]["end_time"] = "2023-10-25 09:45:16"
    timed = Receipt("h1", json.dumps(document).encode(), 1000.0, "e", "", "eventbridge", "")
    assert retry_horizon(timed) == 1698198316.0 + 86_400


def test_unsafe_task_id_is_a_dead_letter_and_never_a_write(
    service: ArchiveService, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A receipt stored under ``../escaped-x`` is dead-lettered ``bad_task_id``; no file."""
    body = te.event("ok-id", "fun-asr", te.batch_output("ok-id", []))
    ReceiptStore(redis_client, 600).claim("../escaped-x", body)
    assert service.archive("../escaped-x", attempt=1) == "dead"
    letter = DeadLetters(redis_client).get("../escaped-x")
    assert letter is not None and letter.reason == Reason.BAD_TASK_ID
    assert not (tmp_path / "escaped-x").exists() and not (tmp_path / "archive").exists()


def test_permanent_failure_dead_letters_at_once(
    service: ArchiveService, redis_client: redis.Redis, result_server: ResultServer, tmp_path: Path
) -> None:
    """A result that is not JSON is recorded in the manifest and dead-lettered on attempt 1."""
    receive(redis_client, "t4", result_server.add("/r/t4.json", b"not json"))
    assert service.archive("t4", attempt=1) == "dead"
    letter = DeadLetters(redis_client).get("t4")
    assert letter is not None and letter.reason == Reason.RESULT_NOT_JSON
    assert manifest(tmp_path, "t4")["archive_status"] == "partial"


def test_poison_loop_guard(
    service: ArchiveService, redis_client: redis.Redis, result_server: ResultServer
) -> None:
    """A task whose runs died more than ``ARCHIVE_MAX_DELIVERIES`` times in a row is
    dead-lettered; a run that ends (a retry included) resets the count."""
    receive(redis_client, "t5", result_server.add("/r/t5.json", BODY))
    redis_client.set("asr:archive:deliveries:t5", service.settings.archive_max_deliveries)
    assert service.archive("t5", attempt=1) == "dead"
    letter = DeadLetters(redis_client).get("t5")
    assert letter is not None and letter.reason == Reason.POISON_LOOP
    url = result_server.add("/r/t5b.json", BODY, faults=[Fault(status=503)] * 30)
    receive(redis_client, "t5b", url)
    for attempt in range(1, service.settings.archive_max_deliveries + 3):
        with pytest.raises(RetryLater):
            service.archive("t5b", attempt=attempt)
    assert redis_client.get("asr:archive:deliveries:t5b") is None


def test_sweep_publishes_stale_receipts(service: ArchiveService, redis_client: redis.Redis) -> None:
    """A receipt left ``received`` past the sweep age is published once and marked enqueued."""
    ReceiptStore(redis_client, 600).claim("t6", b"{}", event_id="e", now=1000.0)
    published: list[str] = []
    later = 1000.0 + service.settings.receipt_sweep_after_seconds + 1
    assert service.sweep(published.append, now=later) == {"receipts": 1, "stuck": 0, "open": 0}
    assert published == ["t6"] and state(redis_client, "t6") == "enqueued"
    assert service.sweep(published.append, now=later) == {"receipts": 0, "stuck": 0, "open": 0}


def test_sweep_reenqueues_an_open_receipt_whose_message_was_lost(
    service: ArchiveService, redis_client: redis.Redis
) -> None:
    """At the default 1800 s, an enqueued receipt with no lease is published once more; one
    with a live lease is left alone; a published one waits its turn again."""
    store = ReceiptStore(redis_client, 600)
    store.claim("lost", b"{}", event_id="e", now=1000.0)
    store.claim("leased", b"{}", event_id="e", now=1000.0)
    store.mark_enqueued("lost")
    store.mark_enqueued("leased")
    assert Lease(redis_client, "leased", 60).acquire()
    assert service.settings.archive_reenqueue_after_seconds == 1800
    published: list[str] = []
    early = 1000.0 + 1799
    assert service.sweep(published.append, now=early)["open"] == 0
    later = 1000.0 + 1801
    assert service.sweep(published.append, now=later) == {"receipts": 0, "stuck": 0, "open": 1}
    assert published == ["lost"]
    assert service.sweep(published.append, now=later + 1)["open"] == 0
    store.set_state("lost", "archived")
    assert service.sweep(published.append, now=later + 3600)["open"] == 0


def test_manifest_names_each_files_local_recording(
    service: ArchiveService, redis_client: redis.Redis, result_server: ResultServer, tmp_path: Path
) -> None:
    """Files of a task asr-ingest submitted carry their local media; others carry null."""
    url = result_server.add("/r/m.json", BODY)
    media_url = "https://bucket.oss-cn-beijing.aliyuncs.com/uploads/ab/cd.wav?Expires=1&Signature=x"
    entries = [
        te.ok(url, file_url=media_url),
        te.ok(url, file_url="https://elsewhere.example/x.wav"),
    ]
    body = te.event("t-m", "fun-asr", te.batch_output("t-m", entries))
    ReceiptStore(redis_client, 600).claim("t-m", body, event_id="e")
    pipe = redis_client.pipeline()
    write_media(pipe, "t-m", {"uploads/ab/cd.wav": Media("talks/cd.wav", "ff" * 32, 1234)}, 600)
    pipe.execute()
    assert service.archive("t-m", attempt=1) == "archived"
    files = manifest(tmp_path, "t-m")["files"]
    assert isinstance(files, list)
    assert files[0]["media"] == {"path": "talks/cd.wav", "sha256": "ff" * 32, "bytes": 1234}
    assert files[1]["media"] is None
