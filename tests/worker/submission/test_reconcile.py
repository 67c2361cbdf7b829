"""Reconciliation against the sandbox and real Redis: lost callbacks still reach the archive."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import redis

from core.events import parse_event
from core.queues import RECONCILE_TASK, SUBMIT_BATCH_TASK, SUBMIT_QUEUE
from core.settings import load_settings
from core.store import ReceiptStore
from sandbox.server import Sandbox
from tests.fixtures.sandbox import MediaServer, wait_for
from worker.app import create_celery
from worker.dashscope import DashScopeClient
from worker.ratelimit import query_limiter
from worker.submission.reconcile import (
    WATERMARK_KEY,
    Reconciler,
    SweepReport,
    locked_sweep,
    synthesise_event,
)
from worker.submission.submissions import Submission, SubmissionStore


class Harness:
    """A reconciler wired to the sandbox and Redis; ``published`` lists archive messages."""

    def __init__(
        self, box: Sandbox, client: redis.Redis, qps: float = 20.0, grace_s: float = 0.0
    ) -> None:
        self.box = box
        self.dashscope = DashScopeClient(box.api_url, box.config.api_key, backoff_s=0.05)
        self.receipts = ReceiptStore(client, 3600)
        self.submissions = SubmissionStore(client, 3600)
        self.published: list[str] = []
        self.reconciler = Reconciler(
            self.receipts,
            self.submissions,
            self.dashscope,
            query_limiter(client, qps),
            publish=self.published.append,
            redis_client=client,
            grace_s=grace_s,
        )

    def submit(self, model: str, urls: list[str], due_at: float | None = None) -> str:
        """Submit a task to the sandbox; record it as ours when ``due_at`` is given."""
        task_id = self.dashscope.submit(model, urls, {})
        if due_at is not None:
            sub = Submission(task_id, model, "", 0, {}, time.time(), [])
            self.submissions.record(sub, due_at, [])
        return task_id

    def finished(self, *task_ids: str) -> Callable[[], bool]:
        def check() -> bool:
            tasks = self.box.state()["tasks"]
            return all(tasks[t]["status"] in ("SUCCEEDED", "FAILED") for t in task_ids)

        return check

    def sweep_later(self) -> SweepReport:
        """A sweep once the tasks submitted are a second old (the list ends a second back)."""
        time.sleep(1.1)
        return self.reconciler.sweep()


def test_finished_task_of_anyone_is_reconciled_from_one_list_page(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer, redis_client: redis.Redis
) -> None:
    """A finished task nobody recorded gets a result-less event, one archive message, no query."""
    h = Harness(make_sandbox(use_ffprobe=False, fail_fraction=0.0), redis_client)
    urls = [media_server.url_for("hello.wav"), media_server.url_for("missing.wav")]
    task_id = h.submit("paraformer-v2", urls)
    wait_for(h.finished(task_id))
    report = h.sweep_later()
    assert (report.archived, report.pages, report.queries) == ([task_id], 1, 0)
    assert h.published == [task_id]
    receipt = h.receipts.load(task_id)
    assert receipt is not None
    assert (receipt.source, receipt.state, receipt.model) == (
        "reconciliation",
        "enqueued",
        "paraformer-v2",
    )
    event = parse_event(receipt.body)
    assert (event.task_id, event.model, event.task_status, event.entries) == (
        task_id,
        "paraformer-v2",
        "SUCCEEDED",
        None,
    )
    data = json.loads(receipt.body)["data"]
    assert data["contain_result"] is False and "output_result" not in data
    assert data["user_api_unique_key"].endswith(":paraformer-v2")
    assert [q["route"] for q in h.box.state()["queries"]] == ["list"]
    again = h.reconciler.sweep()
    assert (again.archived, again.pages) == ([], 1)
    assert h.published == [task_id]


def test_unfinished_received_foreign_and_young_tasks_are_left(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer, redis_client: redis.Redis
) -> None:
    """Running, already received, image/video and just-ended tasks are not archived."""
    box = make_sandbox(use_ffprobe=False, foreign_events=2, foreign_event_interval_seconds=0.05)
    h = Harness(box, redis_client)
    received = h.submit("fun-asr", [media_server.url_for("hello.wav")])
    h.receipts.claim(received, b'{"data": {"task_id": "x"}}', source="eventbridge")
    wait_for(h.finished(received))
    wait_for(lambda: len(box.state()["foreign"]) == 2)
    box.service.config = replace(box.service.config, pending_seconds=30)
    running = h.submit("fun-asr", [media_server.url_for("weather.mp3")])
    report = h.sweep_later()
    assert report.archived == [] and h.published == []
    assert report.pages == 1 and report.queries == 0
    assert h.receipts.load(running) is None
    young = Harness(box, redis_client, grace_s=600)
    box.service.config = replace(box.service.config, pending_seconds=0.02)
    ended = young.submit("fun-asr", [media_server.url_for("hello.wav")])
    wait_for(h.finished(ended))
    assert young.sweep_later().archived == []
    assert h.reconciler.sweep().archived == [ended]


def test_due_tasks_the_list_shows_are_not_queried_and_ghosts_are_lost(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer, redis_client: redis.Redis
) -> None:
    """Our due tasks: a received one settles, a listed running one waits, an unknown one is lost."""
    h = Harness(make_sandbox(use_ffprobe=False, pending_seconds=30), redis_client)
    received = h.submit("fun-asr", [media_server.url_for("hello.wav")], due_at=0.0)
    h.receipts.claim(received, b'{"data": {"task_id": "x"}}', source="eventbridge")
    running = h.submit("fun-asr", [media_server.url_for("weather.mp3")], due_at=0.0)
    h.submissions.record(Submission("ghost", "fun-asr", "", 0, {}, 0.0, []), 0.0, [])
    report = h.sweep_later()
    assert report.received == [received]
    assert report.pending == [running]
    assert report.lost == ["ghost"]
    assert (report.pages, report.queries) == (1, 1)
    assert h.published == []
    assert h.submissions.is_due(running)
    assert h.submissions.due(time.time()) == []


def test_a_due_task_too_new_for_the_list_is_archived_from_its_query(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer, redis_client: redis.Redis
) -> None:
    """A due task outside the list window is queried and archived with its results."""
    h = Harness(make_sandbox(use_ffprobe=False), redis_client)
    task_id = h.submit("fun-asr", [media_server.url_for("hello.wav")], due_at=0.0)
    wait_for(h.finished(task_id))
    report = h.reconciler.sweep(now=time.time() - 3600)  # the window ends an hour ago
    assert report.archived == [task_id] and report.queries == 1
    receipt = h.receipts.load(task_id)
    assert receipt is not None and receipt.source == "reconciliation"
    assert parse_event(receipt.body).entries is not None
    assert not h.submissions.is_due(task_id)


def test_many_tasks_are_paged_deduplicated_and_within_the_budget(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer, redis_client: redis.Redis
) -> None:
    """230 finished tasks: 3 pages at <= 2 per second, each archived exactly once."""
    box = make_sandbox(use_ffprobe=False, submit_rps={"fun-asr": 1000.0})
    h = Harness(box, redis_client, qps=2.0)
    task_ids = [h.submit("fun-asr", [media_server.url_for("hello.wav")]) for _ in range(230)]
    wait_for(h.finished(*task_ids), timeout=60)
    report = h.sweep_later()
    assert sorted(report.archived) == sorted(task_ids) == sorted(h.published)
    assert report.pages == 3
    lists = [q for q in box.state()["queries"] if q["route"] == "list"]
    assert {q["status"] for q in lists} == {200}
    times = sorted(q["at"] for q in lists)
    assert times[2] - times[0] >= 0.4  # a bucket of 2 tokens at 2 per second


def test_the_watermark_narrows_later_windows(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer, redis_client: redis.Redis
) -> None:
    """A running task holds the watermark at its submission; once settled it moves to the end."""
    box = make_sandbox(use_ffprobe=False, pending_seconds=2)
    h = Harness(box, redis_client)
    task_id = h.submit("fun-asr", [media_server.url_for("hello.wav")])
    submitted = box.state()["tasks"][task_id]["submitted_at"]
    h.sweep_later()
    mark = float(redis_client.get(WATERMARK_KEY) or 0)
    assert int(submitted) - 1 <= mark <= submitted
    wait_for(h.finished(task_id))
    assert h.sweep_later().archived == [task_id]
    assert float(redis_client.get(WATERMARK_KEY) or 0) > submitted
    assert h.reconciler._window_start(time.time(), time.time()) > time.time() - 700


def test_sweeps_stay_within_the_query_budget(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer, redis_client: redis.Redis
) -> None:
    """Two concurrent sweeps over 20 due tasks outside the list share the budget, never a 429."""
    box = make_sandbox(use_ffprobe=False, query_qps=20.0, submit_rps={"fun-asr": 1000.0})
    qps = 8.0
    h = Harness(box, redis_client, qps=qps)
    other = Harness(box, redis_client, qps=qps)
    task_ids = [h.submit("fun-asr", [media_server.url_for("hello.wav")], 0.0) for _ in range(20)]
    wait_for(h.finished(*task_ids), timeout=30)
    box.service.queries.clear()
    before = time.time() - 3600  # the list window ends before the tasks: each is queried
    threads = [threading.Thread(target=x.reconciler.sweep, args=(before,)) for x in (h, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    queries = box.state()["queries"]
    assert {q["status"] for q in queries} == {200}
    times = sorted(q["at"] for q in queries)
    assert len([q for q in queries if q["route"] == "query"]) == 20
    burst = qps  # query_limiter's bucket holds up to one second of tokens
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + qps * (times[j] - start) + 1, (i, j)
    assert sorted(set(h.published + other.published)) == sorted(task_ids)
    assert len(h.published + other.published) == 20


def test_locked_sweep_runs_one_at_a_time(
    make_sandbox: Callable[..., Sandbox], redis_client: redis.Redis
) -> None:
    """While the sweep lock is held, another sweep does nothing."""
    h = Harness(make_sandbox(), redis_client)
    h.submissions.record(Submission("ghost", "fun-asr", "", 0, {}, 0.0, []), 0.0, [])
    redis_client.set("asr:lock:reconcile", "someone-else", ex=30)
    assert locked_sweep(redis_client, h.reconciler).queries == 0
    redis_client.delete("asr:lock:reconcile")
    assert locked_sweep(redis_client, h.reconciler).lost == ["ghost"]
    assert redis_client.get("asr:lock:reconcile") is None


def test_receipts_stored_as_reconciled_read_as_reconciliation(redis_client: redis.Redis) -> None:
    """A receipt written before the rename (source "reconciled") loads with the contract's name."""
    redis_client.hset("asr:receipt:old", mapping={"body": b"{}", "source": "reconciled"})
    receipt = ReceiptStore(redis_client, 3600).load("old")
    assert receipt is not None and receipt.source == "reconciliation"


def test_an_account_error_ends_the_sweep_without_moving_the_watermark(
    make_sandbox: Callable[..., Sandbox], redis_client: redis.Redis
) -> None:
    """Arrearage on the list: nothing archived, nothing queried, the watermark unchanged."""
    box = make_sandbox(account_error="arrearage", account_error_seconds=30)
    h = Harness(box, redis_client)
    redis_client.set(WATERMARK_KEY, "123.0")
    h.submissions.record(Submission("t-1", "fun-asr", "", 0, {}, 0.0, []), 0.0, [])
    report = h.reconciler.sweep()
    assert (report.archived, report.pages, report.queries) == ([], 1, 0)
    assert redis_client.get(WATERMARK_KEY) == b"123.0"
    assert h.submissions.is_due("t-1")


def test_synthesised_qwen_event_parses_with_its_single_result() -> None:
    """A reconciled Qwen event carries output.result where the archive parser looks for it."""
    answer = {
        "request_id": "r",
        "output": {
            "task_id": "t",
            "task_status": "SUCCEEDED",
            "result": {
                "file_url": "https://m/a.wav",
                "transcription_url": "https://r/x.json",
                "subtask_status": "SUCCEEDED",
            },
        },
    }
    body = synthesise_event("t", "qwen3-asr-flash-filetrans", answer, now=0.0)
    event = parse_event(body)
    assert event.model == "qwen3-asr-flash-filetrans"
    assert event.entries is not None and len(event.entries) == 1
    assert json.loads(body)["time"] == "1970-01-01T00:00:00.000Z"


def test_beat_sends_the_sweep_to_the_submit_queue() -> None:
    """The Celery app schedules the reconcile task on queue submit and registers both tasks."""
    app = create_celery(load_settings())
    entry = next(e for e in app.conf.beat_schedule.values() if e["task"] == RECONCILE_TASK)
    assert entry["options"]["queue"] == SUBMIT_QUEUE
    assert 0 < entry["schedule"] <= 60
    app.loader.import_default_modules()
    assert {RECONCILE_TASK, SUBMIT_BATCH_TASK} <= set(app.tasks)


def test_the_default_grace_waits_600_s_after_a_task_ended(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer, redis_client: redis.Redis
) -> None:
    """With RECONCILE_AFTER_SECONDS at its default, a task is archived only 600 s after its end."""
    settings = load_settings()
    assert settings.reconcile_after_seconds == 600
    h = Harness(make_sandbox(use_ffprobe=False), redis_client, grace_s=600)
    task_id = h.submit("fun-asr", [media_server.url_for("hello.wav")])
    wait_for(h.finished(task_id))
    ended = h.box.state()["tasks"][task_id]["ended_at"]
    assert h.reconciler.sweep(now=ended + 598).archived == []
    assert h.reconciler.sweep(now=ended + 601).archived == [task_id]
