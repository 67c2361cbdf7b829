"""The archive domain: layout, every family, failures, query fallback, resume, idempotence."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.errors import TransientError
from core.settings import load_settings
from core.store import ReceiptStore
from tests.fixtures.objectstore import MotoProxy
from tests.support import task_events as te
from tests.support.result_server import Fault, ResultServer
from worker.archiving.archive import Archiver, Progress
from worker.archiving.destinations import Destination, open_destination
from worker.archiving.fetch import ResultFetcher
from worker.dashscope import DashScopeClient

BODY_A = te.result_file("a.wav", words=50)
BODY_B = te.result_file("b.wav", words=70)


@pytest.fixture
def local(tmp_path: Path) -> Destination:
    """A local-directory destination."""
    return open_destination((tmp_path / "archive").as_uri(), load_settings())


@pytest.fixture
def fetcher(result_server: ResultServer, tmp_path: Path) -> Iterator[ResultFetcher]:
    """A fetcher for the result server, with a 100 kB cap."""
    spool = tmp_path / "spool"
    spool.mkdir()
    f = ResultFetcher(re.compile(result_server.url_regex), max_bytes=100_000, spool_dir=str(spool))
    yield f
    f.close()


@pytest.fixture
def dashscope(result_server: ResultServer) -> Iterator[DashScopeClient]:
    """A real DashScope client whose base URL is the result server (task answers)."""
    client = DashScopeClient(result_server.url + "/api/v1", "sk-test", max_attempts=1)
    yield client
    client.close()


def store_event(client: redis.Redis, task_id: str, body: bytes) -> Any:
    """Claim ``body`` as the receipt of ``task_id`` and return the stored receipt."""
    store = ReceiptStore(client, 600)
    store.claim(task_id, body, event_id="evt-1", now=1_700_000_000.0)
    return store.load(task_id)


def manifest_of(dest: Destination, task_id: str) -> dict[str, Any]:
    """The parsed manifest of ``task_id`` at ``dest``."""
    raw = dest.get_bytes(f"{task_id}/manifest.json")
    assert raw is not None
    return json.loads(raw)


def run(archiver: Archiver, client: redis.Redis, receipt: Any, final: Any = lambda: False) -> Any:
    """One archive run of ``receipt`` with its Redis progress; ``final()``: no retry left."""
    return archiver.run(receipt, Progress(client, receipt.task_id, 600), final=final)


def test_batch_task_layout(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    local: Destination, tmp_path: Path,
) -> None:  # fmt: skip
    """Fun-ASR: event.json, results/<nnnn>.json byte for byte, manifest with every file."""
    url_a = result_server.add("/r/a.json", BODY_A)
    url_b = result_server.add("/r/b.json", BODY_B)
    results = [te.ok(url_a), te.failed(), te.ok(url_b)]
    receipt = store_event(
        redis_client, "t-1", te.event("t-1", "fun-asr", te.batch_output("t-1", results))
    )
    outcome = run(Archiver([local], fetcher), redis_client, receipt)
    root = tmp_path / "archive/t-1"
    assert outcome.complete
    assert (root / "results/0000.json").read_bytes() == BODY_A
    assert (root / "results/0002.json").read_bytes() == BODY_B
    assert not (root / "results/0001.json").exists()
    event_json = (root / "event.json").read_text()
    assert "Signature" not in event_json and "t-1" in event_json
    manifest = manifest_of(local, "t-1")
    assert manifest["task_id"] == "t-1" and manifest["model"] == "fun-asr"
    assert manifest["event_sha256"] == hashlib.sha256(receipt.body).hexdigest()
    assert manifest["received_at"] == "2023-11-14T22:13:20Z"
    assert manifest["archive_status"] == "complete"
    first, failed, third = manifest["files"]
    assert first["key"] == "t-1/results/0000.json" and first["bytes"] == len(BODY_A)
    assert first["sha256"] == hashlib.sha256(BODY_A).hexdigest()
    assert first["file_url"] == "https://media.example/a.wav"
    assert (failed["key"], failed["subtask_status"], failed["code"]) == (
        None, "FAILED", "InvalidFile.DownloadFailed",
    )  # fmt: skip
    assert third["index"] == 2 and third["key"] == "t-1/results/0002.json"
    assert "Signature" not in json.dumps(manifest)


@pytest.mark.parametrize(
    ("model", "output"),
    [
        ("paraformer-v2", lambda url: te.batch_output("t-2", [te.ok(url)])),
        ("qwen3-asr-flash-filetrans", lambda url: te.qwen_output("t-2", url)),
        ("fun-asr-mtl-2025-08-25", lambda url: te.batch_output("t-2", [te.ok(url)])),
    ],
)
def test_each_family_path(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    local: Destination, tmp_path: Path, model: str, output: Any,
) -> None:  # fmt: skip
    """Paraformer, Qwen filetrans and Fun-ASR snapshots all land in results/0000.json."""
    url = result_server.add("/r/a.json", BODY_A)
    receipt = store_event(redis_client, "t-2", te.event("t-2", model, output(url)))
    assert run(Archiver([local], fetcher), redis_client, receipt).complete
    assert (tmp_path / "archive/t-2/results/0000.json").read_bytes() == BODY_A
    assert manifest_of(local, "t-2")["model"] == model


def test_failed_task_is_archived_with_its_error(
    redis_client: redis.Redis, fetcher: ResultFetcher, local: Destination
) -> None:
    """A FAILED task gets event.json and a manifest with DashScope's code and message."""
    receipt = store_event(redis_client, "t-3", te.event("t-3", "fun-asr", te.failed_output("t-3")))
    outcome = run(Archiver([local], fetcher), redis_client, receipt)
    manifest = manifest_of(local, "t-3")
    assert outcome.complete
    assert (manifest["task_status"], manifest["code"], manifest["files"]) == (
        "FAILED", "InvalidFile.DecodeFailed", [],
    )  # fmt: skip
    assert local.exists("t-3/event.json")


def test_missing_result_is_queried(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    local: Destination, dashscope: DashScopeClient,
) -> None:  # fmt: skip
    """Without output_result the task is queried once (GET /tasks/{id}) and archived."""
    url = result_server.add("/r/a.json", BODY_A)
    answer = {"request_id": "q", "output": te.batch_output("t-4", [te.ok(url)])}
    result_server.add_json("/api/v1/tasks/t-4", answer)
    receipt = store_event(redis_client, "t-4", te.event("t-4", "fun-asr", None))
    outcome = run(Archiver([local], fetcher, query=dashscope.query), redis_client, receipt)
    assert outcome.complete and result_server.hits("/api/v1/tasks/t-4") == 1
    assert local.get_bytes("t-4/results/0000.json") == BODY_A


def test_unknown_model_fails_with_manifest(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    local: Destination,
) -> None:  # fmt: skip
    """An unknown model archives the event and a manifest naming the reason; nothing fetched."""
    url = result_server.add("/r/a.json", BODY_A)
    body = te.event("t-5", "whisper-9", te.batch_output("t-5", [te.ok(url)]))
    receipt = store_event(redis_client, "t-5", body)
    outcome = run(Archiver([local], fetcher), redis_client, receipt)
    manifest = manifest_of(local, "t-5")
    assert not outcome.complete and outcome.errors[0].reason == "unknown_model"
    assert manifest["archive_status"] == "failed"
    assert manifest["archive_error"]["reason"] == "unknown_model"
    assert result_server.hits("/r/a.json") == 0 and local.exists("t-5/event.json")


def test_transient_failure_resumes_without_refetching(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    local: Destination,
) -> None:  # fmt: skip
    """A 5xx stops the run without a manifest; the next run fetches only what is missing."""
    url_a = result_server.add("/r/a.json", BODY_A)
    url_b = result_server.add("/r/b.json", BODY_B, faults=[Fault(status=503)])
    body = te.event("t-6", "fun-asr", te.batch_output("t-6", [te.ok(url_a), te.ok(url_b)]))
    receipt = store_event(redis_client, "t-6", body)
    archiver = Archiver([local], fetcher)
    with pytest.raises(TransientError):
        run(archiver, redis_client, receipt)
    assert not archiver.is_archived("t-6") and local.exists("t-6/results/0000.json")
    assert run(archiver, redis_client, receipt).complete
    assert (result_server.hits("/r/a.json"), result_server.hits("/r/b.json")) == (1, 2)
    assert archiver.is_archived("t-6")


def test_final_attempt_records_partial_failure(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    local: Destination,
) -> None:  # fmt: skip
    """On the last attempt a still-failing file is marked in the manifest; the rest is kept."""
    url_a = result_server.add("/r/a.json", BODY_A)
    url_b = result_server.add("/r/b.json", BODY_B, faults=[Fault(status=503)] * 5)
    url_c = result_server.add("/r/c.json", b"x" * 200_000)
    results = [te.ok(url_a), te.ok(url_b), te.ok(url_c)]
    receipt = store_event(
        redis_client, "t-7", te.event("t-7", "fun-asr", te.batch_output("t-7", results))
    )
    outcome = run(Archiver([local], fetcher), redis_client, receipt, final=lambda: True)
    manifest = manifest_of(local, "t-7")
    assert [e.reason for e in outcome.errors] == ["result_http_5xx", "result_too_large"]
    assert manifest["archive_status"] == "partial"
    a, b, c = manifest["files"]
    assert a["key"] == "t-7/results/0000.json" and a["error"] is None
    assert (b["key"], b["error"]["reason"]) == (None, "result_http_5xx")
    assert (c["key"], c["error"]["reason"]) == (None, "result_too_large")


def test_expired_link_gets_one_fresh_query(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    local: Destination, dashscope: DashScopeClient,
) -> None:  # fmt: skip
    """A 403 triggers one task query; the fresh link is archived."""
    old = result_server.add("/r/old.json", b"{}", faults=[Fault(status=403)])
    new = result_server.add("/r/new.json", BODY_A)
    answer = {"request_id": "q", "output": te.batch_output("t-8", [te.ok(new)])}
    result_server.add_json("/api/v1/tasks/t-8", answer)
    receipt = store_event(
        redis_client, "t-8", te.event("t-8", "fun-asr", te.batch_output("t-8", [te.ok(old)]))
    )
    assert run(Archiver([local], fetcher, query=dashscope.query), redis_client, receipt).complete
    assert local.get_bytes("t-8/results/0000.json") == BODY_A
    assert result_server.hits("/api/v1/tasks/t-8") == 1


def test_expired_link_twice_is_permanent(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    local: Destination, dashscope: DashScopeClient,
) -> None:  # fmt: skip
    """When the fresh link is expired too, the file fails as result_expired (no more queries)."""
    old = result_server.add("/r/old.json", b"{}", faults=[Fault(status=404)])
    new = result_server.add("/r/new.json", b"{}", faults=[Fault(status=403)])
    answer = {"request_id": "q", "output": te.batch_output("t-9", [te.ok(new)])}
    result_server.add_json("/api/v1/tasks/t-9", answer)
    receipt = store_event(
        redis_client, "t-9", te.event("t-9", "fun-asr", te.batch_output("t-9", [te.ok(old)]))
    )
    outcome = run(Archiver([local], fetcher, query=dashscope.query), redis_client, receipt)
    assert [e.reason for e in outcome.errors] == ["result_expired"]
    assert result_server.hits("/api/v1/tasks/t-9") == 1


def test_manifest_is_written_last_to_s3(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    moto_proxy: MotoProxy, s3_bucket: str,
) -> None:  # fmt: skip
    """At S3 the manifest PUT comes after every other object of the task."""
    dest = open_destination(f"s3://{s3_bucket}/p", load_settings(s3_endpoint_url=moto_proxy.url))
    urls = [result_server.add(f"/r/{i}.json", BODY_A) for i in range(3)]
    body = te.event("t-10", "fun-asr", te.batch_output("t-10", [te.ok(u) for u in urls]))
    receipt = store_event(redis_client, "t-10", body)
    run(Archiver([dest], fetcher), redis_client, receipt)
    puts = [p for m, p, _ in moto_proxy.requests if m == "PUT"]
    assert puts[-1].endswith("/t-10/manifest.json") and len(puts) == 5


def test_result_files_reach_s3_with_the_manifest_digest(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    moto_proxy: MotoProxy, s3_bucket: str,
) -> None:  # fmt: skip
    """Each result file's PUT carries the sha256 the manifest records, for S3 to verify."""
    dest = open_destination(f"s3://{s3_bucket}/p", load_settings(s3_endpoint_url=moto_proxy.url))
    urls = [result_server.add("/r/a.json", BODY_A), result_server.add("/r/b.json", BODY_B)]
    body = te.event("t-11", "fun-asr", te.batch_output("t-11", [te.ok(u) for u in urls]))
    outcome = run(Archiver([dest], fetcher), redis_client, store_event(redis_client, "t-11", body))
    files = outcome.manifest["files"]
    assert [f["sha256"] for f in files] == [hashlib.sha256(b).hexdigest() for b in (BODY_A, BODY_B)]
    assert dict(moto_proxy.checksums) == {
        f"/{s3_bucket}/p/{f['key']}": base64.b64encode(bytes.fromhex(f["sha256"])).decode()
        for f in files
    }


def test_unfinished_task_is_retried_later(
    redis_client: redis.Redis, fetcher: ResultFetcher, local: Destination,
    result_server: ResultServer, dashscope: DashScopeClient,
) -> None:  # fmt: skip
    """A queried task still RUNNING is a transient failure: nothing but event.json is written."""
    answer = {"output": {"task_id": "t-11", "task_status": "RUNNING"}}
    result_server.add_json("/api/v1/tasks/t-11", answer)
    receipt = store_event(redis_client, "t-11", te.event("t-11", "fun-asr", None))
    with pytest.raises(TransientError) as info:
        run(Archiver([local], fetcher, query=dashscope.query), redis_client, receipt)
    assert info.value.reason == "task_not_finished"
    assert not local.exists("t-11/manifest.json")


def test_progress_is_scoped_to_destinations(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    local: Destination, tmp_path: Path,
) -> None:  # fmt: skip
    """After a destination is added, a replay writes every object there too."""
    url = result_server.add("/r/a.json", BODY_A)
    receipt = store_event(
        redis_client, "t-12", te.event("t-12", "fun-asr", te.batch_output("t-12", [te.ok(url)]))
    )
    extra = open_destination((tmp_path / "second").as_uri(), load_settings())
    first = Progress(redis_client, "t-12", 600, [local.url])
    Archiver([local], fetcher).run(receipt, first)
    both = Progress(redis_client, "t-12", 600, [local.url, extra.url])
    assert Archiver([local, extra], fetcher).run(receipt, both).complete
    assert extra.get_bytes("t-12/results/0000.json") == BODY_A and extra.exists("t-12/event.json")


def test_a_bug_in_one_file_fails_that_file_only(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    local: Destination, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """An unexpected exception while archiving one file is that file's ``internal_error``;
    the other files are archived and the manifest records them all."""
    url_a = result_server.add("/r/a.json", BODY_A)
    url_b = result_server.add("/r/b.json", BODY_B)
    body = te.event("t-bug", "fun-asr", te.batch_output("t-bug", [te.ok(url_a), te.ok(url_b)]))
    receipt = store_event(redis_client, "t-bug", body)
    original = local.put_bytes

    def put_bytes(key: str, data: bytes, sha256: str = "") -> None:
        if key.endswith("0001.json"):
            raise RecursionError("a bug")
        original(key, data, sha256)

    monkeypatch.setattr(local, "put_bytes", put_bytes)
    outcome = run(Archiver([local], fetcher), redis_client, receipt)
    a, b = manifest_of(local, "t-bug")["files"]
    assert a["key"] == "t-bug/results/0000.json" and a["error"] is None
    assert b["key"] is None and b["error"]["reason"] == "internal_error"
    assert [e.reason for e in outcome.errors] == ["internal_error"]


def commands(client: redis.Redis) -> dict[str, int]:
    """Calls per Redis command so far (``INFO commandstats``)."""
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def test_progress_costs_one_read_per_run_and_one_write_per_object(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    local: Destination,
) -> None:  # fmt: skip
    """A run reads its progress once (HGETALL) and records each object with one HSET; the
    key's expiry is set once, with the first record; a second run skips what it recorded."""
    urls = [result_server.add(f"/r/{n}.json", BODY_A) for n in range(3)]
    output = te.batch_output("t-rc", [te.ok(u) for u in urls])
    receipt = store_event(redis_client, "t-rc", te.event("t-rc", "fun-asr", output))
    before = commands(redis_client)
    assert run(Archiver([local], fetcher), redis_client, receipt).complete
    after = commands(redis_client)
    spent = {name: after[name] - before.get(name, 0) for name in after}
    setup = {"info", "hello", "client", "ping"}  # this test's INFO; new pooled connections
    spent = {name: calls for name, calls in spent.items() if calls and name not in setup}
    assert spent == {"hgetall": 1, "hset": 4, "multi": 1, "expire": 1, "exec": 1}  # event + 3
    assert 0 < redis_client.ttl("asr:archive:progress:t-rc") <= 600
    run(Archiver([local], fetcher), redis_client, receipt)
    assert all(result_server.hits(f"/r/{n}.json") == 1 for n in range(3))


def test_event_is_written_while_the_files_download(
    redis_client: redis.Redis, result_server: ResultServer, fetcher: ResultFetcher,
    local: Destination, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The event's own object goes to the destinations while the result file downloads, not
    before it (one store round trip less per task); the manifest still comes last."""
    url = result_server.add("/r/slow.json", BODY_A, chunk_delay_s=0.3)
    body = te.event("t-ev", "fun-asr", te.batch_output("t-ev", [te.ok(url)]))
    receipt = store_event(redis_client, "t-ev", body)
    original, seen, order = local.put_bytes, [], []

    def put_bytes(key: str, data: bytes, sha256: str = "") -> None:
        if key.endswith("event.json"):  # wait (bounded) for the download to have begun
            deadline = time.monotonic() + 5
            while not result_server.hits("/r/slow.json") and time.monotonic() < deadline:
                time.sleep(0.01)
            seen.append(result_server.hits("/r/slow.json"))
        order.append(key.rsplit("/", 1)[-1])
        original(key, data, sha256)

    monkeypatch.setattr(local, "put_bytes", put_bytes)
    assert run(Archiver([local], fetcher), redis_client, receipt).complete
    assert seen == [1]
    assert order == ["event.json", "0000.json", "manifest.json"]
