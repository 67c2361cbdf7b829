"""Reconciliation against the sandbox and real Redis: lost callbacks still reach the archive."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

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
from worker.submission.reconcile import Reconciler, locked_sweep, synthesise_event
from worker.submission.submissions import Submission, SubmissionStore


class Harness:
    """A reconciler wired to the sandbox and Redis; ``published`` lists archive messages."""

    def __init__(self, box: Sandbox, client: redis.Redis, qps: float = 20.0) -> None:
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
        )

    def submit(self, model: str, urls: list[str], due_at: float = 0.0) -> str:
        """Submit a task to the sandbox and record it as ours."""
        task_id = self.dashscope.submit(model, urls, {})
        sub = Submission(task_id, model, "", 0, {}, time.time(), [])
        self.submissions.record(sub, due_at, [])
        return task_id

    def finished(self, *task_ids: str) -> Callable[[], bool]:
        def check() -> bool:
            tasks = self.box.state()["tasks"]
            return all(tasks[t]["status"] in ("SUCCEEDED", "FAILED") for t in task_ids)

        return check


def test_finished_task_without_event_is_reconciled_and_archived(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer, redis_client: redis.Redis
) -> None:
    """A finished task with no receipt gets a synthesised event, one archive message, settles."""
    h = Harness(make_sandbox(use_ffprobe=False, fail_fraction=0.0), redis_client)
    urls = [media_server.url_for("hello.wav"), media_server.url_for("missing.wav")]
    task_id = h.submit("paraformer-v2", urls)
    wait_for(h.finished(task_id))
    report = h.reconciler.sweep()
    assert report.archived == [task_id] and report.queries == 1
    assert h.published == [task_id]
    receipt = h.receipts.load(task_id)
    assert receipt is not None
    assert (receipt.source, receipt.state, receipt.model) == (
        "reconciled",
        "enqueued",
        "paraformer-v2",
    )
    event = parse_event(receipt.body)
    assert (event.task_id, event.model, event.task_status) == (
        task_id,
        "paraformer-v2",
        "SUCCEEDED",
    )
    assert event.entries is not None
    assert [e.subtask_status for e in event.entries] == ["SUCCEEDED", "FAILED"]
    assert json.loads(receipt.body)["data"]["contain_result"] is True
    assert not h.submissions.is_due(task_id)
    assert h.reconciler.sweep().queries == 0


def test_received_running_and_unknown_tasks(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer, redis_client: redis.Redis
) -> None:
    """A received task settles unqueried; a running one is rechecked later; an unknown is lost."""
    h = Harness(make_sandbox(use_ffprobe=False, pending_seconds=30), redis_client)
    received = h.submit("fun-asr", [media_server.url_for("hello.wav")])
    h.receipts.claim(received, b'{"data": {"task_id": "x"}}', source="eventbridge")
    running = h.submit("fun-asr", [media_server.url_for("weather.mp3")])
    h.submissions.record(Submission("ghost", "fun-asr", "", 0, {}, 0.0, []), 0.0, [])
    report = h.reconciler.sweep()
    assert report.received == [received]
    assert report.pending == [running]
    assert report.lost == ["ghost"]
    assert report.queries == 2
    assert h.published == []
    assert h.submissions.is_due(running)
    assert h.submissions.due(time.time()) == []


def test_sweeps_stay_within_the_query_budget(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer, redis_client: redis.Redis
) -> None:
    """Two concurrent sweeps of 20 due tasks share the budget (rate + burst) and never get 429."""
    box = make_sandbox(use_ffprobe=False, query_qps=20.0, submit_rps={"fun-asr": 1000.0})
    qps = 8.0
    h = Harness(box, redis_client, qps=qps)
    other = Harness(box, redis_client, qps=qps)
    task_ids = [h.submit("fun-asr", [media_server.url_for("hello.wav")]) for _ in range(20)]
    wait_for(h.finished(*task_ids), timeout=30)
    box.service.queries.clear()
    threads = [threading.Thread(target=x.reconciler.sweep) for x in (h, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    queries = box.state()["queries"]
    assert {q["status"] for q in queries} == {200}
    times = sorted(q["at"] for q in queries)
    assert len(times) == 20
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
