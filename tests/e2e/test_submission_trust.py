"""End to end, the submission side's promises: no result lost, none paid for twice.

Real processes: a gunicorn webhook and a Celery worker with beat under
:class:`asr_ingest.stack.Stack`; Redis from the session fixture; the sandbox (DashScope +
EventBridge) and moto (S3 archive, OSS media) in this process, over real HTTP.

- events lost while the webhook is down (console-default BACKOFF retry policy) for tasks that
  the official ``dashscope`` SDK submitted, not asr-ingest: reconciliation archives every one,
  inside the query budget;
- 30 % of submit answers lost and the worker SIGKILLed while DashScope holds an answer back:
  exactly one task per batch;
- 20 s of ``Arrearage`` in the middle of a 200-file submission, with the default probe
  interval: no file fails, all are archived, and DashScope sees no submit in the outage
  beyond the calls in flight when it began and the probes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dashscope
import pytest
import redis
from dashscope.audio.asr import Transcription

from asr_ingest.stack import Stack
from asr_ingest.starters import free_port, webhook_spec, worker_spec
from asr_ingest.submit_cmd import submit_paths, wait_for
from core.settings import load_settings
from sandbox.server import Sandbox
from tests.e2e.support import local_manifests
from tests.e2e.test_run import run_env
from tests.fixtures.sandbox import MediaServer
from tests.fixtures.sandbox import wait_for as wait_until
from tests.worker.submission.submit_support import make_media

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A supervisor whose children's logs go to ``tmp_path/logs``; stopped after the test."""
    with Stack(sink=lambda _line: None, log_dir=tmp_path / "logs", handle_signals=False) as s:
        yield s


def _env(
    box: Sandbox, public_url: str, tmp_path: Path, redis_url: str, moto: str, bucket: str
) -> dict[str, str]:
    env = run_env(box, public_url, tmp_path / "archive", bucket, moto)
    env.update(REDIS_URL=redis_url)
    return env


def assert_within_budget(calls: list[dict[str, Any]], qps: float) -> None:
    """No 429 among ``calls`` and, for any two, at most burst + qps x (time between) + 1."""
    assert {c["status"] for c in calls} <= {200}, [c for c in calls if c["status"] != 200][:3]
    times = sorted(c["at"] for c in calls)
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= qps + qps * (times[j] - start) + 1, (i, j)


def _archived_at(manifest: dict[str, Any]) -> float:
    return datetime.fromisoformat(manifest["archived_at"].replace("Z", "+00:00")).timestamp()


def test_sdk_tasks_finished_while_the_webhook_is_down_are_all_reconciled(
    tmp_path: Path,
    redis_url: str,
    moto_endpoint: str,
    s3_bucket: str,
    make_sandbox: Callable[..., Sandbox],
    media_server: MediaServer,
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """24 SDK-submitted tasks end while the webhook is down 60 s: all archived by reconciliation."""
    web_port = free_port()
    public_url = f"http://127.0.0.1:{web_port}/callbacks/eventbridge"
    box = make_sandbox(
        callback_url=public_url,
        retry_strategy="backoff",
        results_in_events=False,
        foreign_events=4,
        foreign_event_interval_seconds=0.5,
    )
    qps = 2.0
    env = _env(box, public_url, tmp_path, redis_url, moto_endpoint, s3_bucket)
    env.update(DASHSCOPE_QUERY_QPS=str(qps), RECONCILE_AFTER_SECONDS="5")
    stack.start(worker_spec(env, beat_schedule=tmp_path / "beat"))
    monkeypatch.setattr(dashscope, "base_http_api_url", box.api_url)
    names = sorted(media_server.blobs)
    task_ids = []
    for n in range(24):
        model = ("fun-asr", "paraformer-v2")[n % 2]
        urls = [media_server.url_for(names[n % len(names)])]
        answer = Transcription.async_call(model=model, file_urls=urls, api_key=box.api_key)
        assert answer.status_code == 200, answer
        task_ids.append(answer.output.task_id)
        time.sleep(0.15)  # inside the sandbox's per-model submit rate (Fun-ASR 10/s)
    down_until = time.monotonic() + 60
    while time.monotonic() < down_until:  # the webhook is down: every push fails
        time.sleep(1)
    stack.start(webhook_spec(web_port, env))
    archive = tmp_path / "archive"
    wait_until(lambda: set(local_manifests(archive)) >= set(task_ids), timeout=120)

    manifests = local_manifests(archive)
    assert set(manifests) == set(task_ids)  # foreign image/video tasks are not archived
    assert {m["source"] for m in manifests.values()} == {"reconciliation"}
    assert all(m["archive_status"] == "complete" for m in manifests.values())
    state = box.state()
    assert_within_budget(state["queries"], qps)
    ended = {t: state["tasks"][t]["ended_at"] for t in task_ids}
    lag = [_archived_at(manifests[t]) - ended[t] for t in task_ids]
    lists = sum(q["route"] == "list" for q in state["queries"])
    queries = sum(q["route"] == "query" for q in state["queries"])
    print(
        f"\nreconciled {len(task_ids)} tasks: archive lag max {max(lag):.1f} s, "
        f"median {sorted(lag)[len(lag) // 2]:.1f} s; {lists} list pages, {queries} queries, "
        f"budget {qps} qps"
    )


def test_lost_answers_and_a_kill_mid_submission_make_one_task_per_batch(
    tmp_path: Path,
    redis_url: str,
    moto_endpoint: str,
    s3_bucket: str,
    make_sandbox: Callable[..., Sandbox],
    sample_paths: list[Path],
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """30 % of answers lost, the worker killed while an answer is held back: no duplicate."""
    web_port = free_port()
    public_url = f"http://127.0.0.1:{web_port}/callbacks/eventbridge"
    box = make_sandbox(
        callback_url=public_url, ambiguous_submit_fraction=0.3, ambiguous_submit_delay_seconds=4
    )
    env = _env(box, public_url, tmp_path, redis_url, moto_endpoint, s3_bucket)
    env.update(
        BROKER_VISIBILITY_TIMEOUT_SECONDS="10",
        # consistent with it (worker/timeouts.py): lease below, countdowns at most half
        ARCHIVE_LEASE_SECONDS="3",
        ARCHIVE_RETRY_MAX_SECONDS="5",
        DASHSCOPE_BREAKER_PROBE_SECONDS="5",
        DASHSCOPE_TIMEOUT_SECONDS="8",
        SUBMIT_UNCERTAIN_SETTLE_SECONDS="10",
        SUBMIT_BATCH_SIZE="2",
        SUBMIT_RATES="fun-asr=2",
    )
    stack.start_many([webhook_spec(web_port, env), worker_spec(env, beat_schedule=tmp_path / "b")])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    make_media(tmp_path / "in", sample_paths, 30)
    report = submit_paths(settings, [str(tmp_path / "in")], "fun-asr")
    assert report.batches == 15

    def held_back() -> bool:
        return any(s.get("answer_lost") == "delay" for s in box.state()["submissions"])

    wait_until(held_back, timeout=60)  # DashScope created the task and holds its answer
    stack.kill("worker")
    killed_at, before_kill = time.time(), box.state()["submissions"]
    killed_after = len(before_kill)
    stack.restart("worker")
    outcomes = wait_for(settings, report.run_id, timeout_s=240, poll_s=1.0)

    assert [o.status for o in outcomes] == ["succeeded"] * 30
    state = box.state()
    assert 0 < killed_after < 15
    held = [s for s in before_kill if s["answer_lost"] == "delay" and s["at"] + 4 > killed_at]
    assert held, "the kill came after every held answer was given"
    assert any(s["answer_lost"] == "drop" for s in state["submissions"])
    assert len(state["tasks"]) == 15 == len(state["submissions"])
    per_file: dict[str, int] = {}
    for task in state["tasks"].values():
        for subtask in task["subtasks"]:
            path = urlsplit(subtask["file_url"]).path
            per_file[path] = per_file.get(path, 0) + 1
    assert len(per_file) == 30 and set(per_file.values()) == {1}
    assert set(local_manifests(tmp_path / "archive")) == set(state["tasks"])


def test_arrearage_during_200_files_fails_nothing_and_probes_at_the_default_interval(
    tmp_path: Path,
    redis_url: str,
    moto_endpoint: str,
    s3_bucket: str,
    make_sandbox: Callable[..., Sandbox],
    sample_paths: list[Path],
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20 s of Arrearage: files wait, then all 200 are archived; refusals <= in flight + probes."""
    web_port = free_port()
    public_url = f"http://127.0.0.1:{web_port}/callbacks/eventbridge"
    box = make_sandbox(callback_url=public_url, error_msg_fraction=0.5)
    env = _env(box, public_url, tmp_path, redis_url, moto_endpoint, s3_bucket)
    env.update(SUBMIT_BATCH_SIZE="10", SUBMIT_RATES="fun-asr=4")  # probe interval: the default
    concurrency = 4
    stack.start_many(
        [
            webhook_spec(web_port, env),
            worker_spec(env, beat_schedule=tmp_path / "b", concurrency=concurrency),
        ]
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.dashscope_breaker_probe_seconds == 60.0
    make_media(tmp_path / "in", sample_paths, 200)
    report = submit_paths(settings, [str(tmp_path / "in")], "fun-asr")
    assert report.batches == 20
    wait_until(lambda: len(box.state()["submissions"]) >= 3, timeout=60)
    box.service.set_account_error("arrearage", 20.0)
    outage_start = time.time()
    outcomes = wait_for(settings, report.run_id, timeout_s=240, poll_s=1.0)

    assert [o.status for o in outcomes] == ["succeeded"] * 200
    state = box.state()
    refused = [s for s in state["submissions"] if s.get("code") == "Arrearage"]
    in_outage = [s for s in state["submissions"] if outage_start <= s["at"] < outage_start + 20]
    probes = math.ceil(20 / settings.dashscope_breaker_probe_seconds)
    assert refused and len(in_outage) == len(refused) <= concurrency + probes
    accepted = [s for s in state["submissions"] if s["status"] == 200]
    assert len(accepted) == 20 and sum(s["files"] for s in accepted) == 200
    assert len(local_manifests(tmp_path / "archive")) == 20
    log = (tmp_path / "logs" / "worker.log").read_text()
    events = [json.loads(line).get("event") for line in log.splitlines() if line.startswith("{")]
    assert events.count("dashscope_breaker_opened") == 1
    assert events.count("dashscope_breaker_closed") == 1
    resumed = min(s["at"] for s in accepted if s["at"] > outage_start)
    client = redis.Redis.from_url(redis_url)
    assert client.exists("asr:breaker:account") == 0
    client.close()
    print(
        f"\narrearage 20 s: {len(refused)} refused submits, first accepted after "
        f"{resumed - outage_start:.1f} s"
    )
