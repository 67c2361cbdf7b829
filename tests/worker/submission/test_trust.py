"""Submits whose answer is lost, workers dying after DashScope answered, an account refused:
against real Redis, moto as OSS and the sandbox as DashScope, batches run in this process."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from core.settings import Settings
from sandbox.server import Sandbox
from tests.fixtures.sandbox import wait_for
from tests.worker.submission.submit_support import make_media, submit_settings
from worker.dashscope import AmbiguousSubmitError, DashScopeClient
from worker.submission.batching import plan_batches
from worker.submission.breaker import PROBE_POLL_S, STATE_KEY, AccountBreaker, Admission
from worker.submission.media import walk
from worker.submission.submissions import SubmissionStore
from worker.submission.submitter import BatchDeferred, Submitter
from worker.submission.uncertain import IntentStore, output_paths


def _plan(settings: Settings, files: list[Path], model: str, size: int) -> tuple[str, int]:
    accepted, _ = walk(files)
    batches = plan_batches(accepted, model, size)
    store = SubmissionStore(redis.Redis.from_url(settings.redis_url), 3600)
    return store.create_run(model, {}, batches, []), len(batches)


def drain(submitter: Submitter, run_id: str, batches: int, timeout_s: float = 90) -> list[str]:
    """Run every batch until none is deferred (waiting out each countdown); the reasons seen."""
    due = dict.fromkeys(range(batches), 0.0)
    reasons: list[str] = []
    deadline = time.monotonic() + timeout_s
    while due:
        assert time.monotonic() < deadline, f"batches still deferred: {sorted(due)}"
        now = time.monotonic()
        for n in [n for n, at in due.items() if at <= now]:
            try:
                submitter.submit_batch(run_id, n)
                del due[n]
            except BatchDeferred as deferred:
                due[n] = now + deferred.seconds
                reasons.append(deferred.reason)
        time.sleep(0.05)
    return reasons


def _tasks_per_file(box: Sandbox) -> dict[str, int]:
    """Media path → number of sandbox tasks that took it."""
    counts: dict[str, int] = {}
    for task in box.state()["tasks"].values():
        for subtask in task["subtasks"]:
            path = urlsplit(subtask["file_url"]).path
            counts[path] = counts.get(path, 0) + 1
    return counts


def test_lost_answers_resolve_to_exactly_one_task_per_batch(
    tmp_path: Path,
    sample_paths: list[Path],
    make_sandbox: Callable[..., Sandbox],
    moto_endpoint: str,
    s3_bucket: str,
    redis_url: str,
) -> None:
    """30 % of answers dropped or late: every batch is recorded once, no file in two tasks."""
    box = make_sandbox(
        use_ffprobe=False, ambiguous_submit_fraction=0.3, ambiguous_submit_delay_seconds=2.0
    )
    settings = submit_settings(
        redis_url,
        moto_endpoint,
        s3_bucket,
        box,
        submit_batch_size=2,
        dashscope_timeout_seconds=1.0,
        submit_uncertain_settle_seconds=3.0,
    )
    files = make_media(tmp_path / "in", sample_paths, 24)
    run_id, batches = _plan(settings, files, "paraformer-v2", 2)
    submitter = Submitter.from_settings(settings, redis.Redis.from_url(redis_url))
    reasons = drain(submitter, run_id, batches)
    state = box.state()
    lost = [s for s in state["submissions"] if s["answer_lost"]]
    assert len(lost) >= 3 and "submit_uncertain" in reasons
    assert len(state["tasks"]) == batches == 12
    assert set(_tasks_per_file(box).values()) == {1}
    recorded = {submitter.store.batch_task(run_id, n) for n in range(batches)}
    assert recorded == set(state["tasks"])
    assert {s.state for s in submitter.store.file_states(run_id).values()} == {"submitted"}


def test_a_batch_killed_after_the_answer_finds_its_task(
    tmp_path: Path,
    sample_paths: list[Path],
    make_sandbox: Callable[..., Sandbox],
    moto_endpoint: str,
    s3_bucket: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The task was created, the record never written: the rerun records it, submits nothing."""
    box = make_sandbox(use_ffprobe=False)
    settings = submit_settings(redis_url, moto_endpoint, s3_bucket, box)
    run_id, _ = _plan(settings, make_media(tmp_path / "in", sample_paths, 3), "fun-asr", 100)
    dying = Submitter.from_settings(settings, redis.Redis.from_url(redis_url))

    def killed(*args: object, **kwargs: object) -> None:
        raise SystemExit("SIGKILL stand-in: between DashScope's answer and our record")

    monkeypatch.setattr(dying.store, "record", killed)
    with pytest.raises(SystemExit):
        dying.submit_batch(run_id, 0)
    redis.Redis.from_url(redis_url).delete(f"asr:run:{run_id}:batch:0:lock")  # died: no unlock
    fresh = Submitter.from_settings(settings, redis.Redis.from_url(redis_url))
    drain(fresh, run_id, 1)
    (task_id,) = box.state()["tasks"]
    assert fresh.store.batch_task(run_id, 0) == task_id
    assert len(box.state()["submissions"]) == 1
    assert IntentStore(fresh.redis_client, 3600).load(run_id, 0) is None


def test_an_attempt_that_created_nothing_is_submitted_after_the_list_settles(
    tmp_path: Path,
    sample_paths: list[Path],
    make_sandbox: Callable[..., Sandbox],
    moto_endpoint: str,
    s3_bucket: str,
    redis_url: str,
) -> None:
    """An intent with no task behind it: two looks over SETTLE seconds, then one submission."""
    box = make_sandbox(use_ffprobe=False)
    settings = submit_settings(
        redis_url, moto_endpoint, s3_bucket, box, submit_uncertain_settle_seconds=2.0
    )
    run_id, _ = _plan(settings, make_media(tmp_path / "in", sample_paths, 2), "fun-asr", 100)
    submitter = Submitter.from_settings(settings, redis.Redis.from_url(redis_url))
    other = submitter.client.submit("fun-asr", [box.url + "/elsewhere.wav"])  # not ours
    wait_for(lambda: box.state()["tasks"][other]["status"] == "FAILED")
    real_submit = submitter.client.submit
    calls: list[str] = []

    def lost_on_the_way(*args: Any, **kwargs: Any) -> str:
        calls.append("submit")
        if len(calls) == 1:
            raise AmbiguousSubmitError("connection dropped before the request arrived")
        return real_submit(*args, **kwargs)

    submitter.client.submit = lost_on_the_way  # type: ignore[method-assign]  # test double
    started = time.monotonic()
    reasons = drain(submitter, run_id, 1)
    assert time.monotonic() - started >= 2.0
    assert reasons.count("submit_uncertain") >= 2
    assert len(calls) == 2 and len(box.state()["submissions"]) == 2  # the foreign one and ours
    assert submitter.store.batch_task(run_id, 0) in box.state()["tasks"]


def test_arrearage_pauses_all_batches_probes_and_resumes(
    tmp_path: Path,
    sample_paths: list[Path],
    make_sandbox: Callable[..., Sandbox],
    moto_endpoint: str,
    s3_bucket: str,
    redis_url: str,
) -> None:
    """4 s of Arrearage: batches wait (not fail), one probe a second, all submitted after."""
    box = make_sandbox(use_ffprobe=False, error_msg_fraction=1.0)
    settings = submit_settings(
        redis_url,
        moto_endpoint,
        s3_bucket,
        box,
        submit_batch_size=1,
        dashscope_breaker_probe_seconds=1.0,
    )
    run_id, batches = _plan(settings, make_media(tmp_path / "in", sample_paths, 10), "fun-asr", 1)
    submitter = Submitter.from_settings(settings, redis.Redis.from_url(redis_url))
    submitter.submit_batch(run_id, 0)
    box.service.set_account_error("arrearage", 4.0)
    started = time.time()
    reasons = drain(submitter, run_id, batches)
    refused = [s for s in box.state()["submissions"] if s.get("code") == "Arrearage"]
    assert 3 <= len(refused) <= 6  # the first refusal, then about one probe a second
    assert all(s["at"] - started < 4.5 for s in refused)
    assert "account_blocked" in reasons
    accepted = [s for s in box.state()["submissions"] if s["status"] == 200]
    assert len(accepted) == batches
    assert {s.state for s in submitter.store.file_states(run_id).values()} == {"submitted"}
    assert AccountBreaker(submitter.redis_client, 1.0).open_code() is None


def test_the_breaker_logs_and_counts_each_state_change_once(redis_client: redis.Redis) -> None:
    """Two trips and two resets from two processes' views: one opening, one closing."""
    from prometheus_client import REGISTRY

    def count(state: str) -> float:
        labels = {"state": state, "code": "Throttling.AllocationQuota"}
        return REGISTRY.get_sample_value("asr_dashscope_breaker_transitions_total", labels) or 0.0

    opened, closed = count("open"), count("closed")
    first, second = AccountBreaker(redis_client, 30.0), AccountBreaker(redis_client, 30.0)
    first.trip("Throttling.AllocationQuota")
    second.trip("Throttling.AllocationQuota")
    assert second.admit().wait > 25.0  # the first probe waits one interval
    assert redis_client.hget(STATE_KEY, "code") == b"Throttling.AllocationQuota"
    redis_client.delete("asr:breaker:probe")
    assert first.admit() == Admission(0.0, probe=True)  # one probe per interval
    assert second.admit().wait == PROBE_POLL_S  # it looks again soon
    second.reset()
    first.reset()
    assert (count("open") - opened, count("closed") - closed) == (1.0, 1.0)
    assert _breaker_open(redis_client) == 0.0
    first.trip("Arrearage")
    assert _breaker_open(redis_client) == 1.0
    first.reset()


def _breaker_open(client: redis.Redis) -> float | None:
    """``asr_dashscope_breaker_open`` as a scrape reads it from Redis (core.gauges)."""
    from prometheus_client import CollectorRegistry

    from core.gauges import StateCollector

    registry = CollectorRegistry()
    registry.register(StateCollector(client))
    return registry.get_sample_value("asr_dashscope_breaker_open")


def test_the_resolver_compares_paths_without_query_strings() -> None:
    """Result file URLs match our signed URLs by path; Qwen's single result counts too."""
    output = {
        "results": [
            {"file_url": "https://b.oss-cn-beijing.aliyuncs.com/media/a%20b.wav?Signature=x"},
            {"file_url": "https://b.oss-cn-beijing.aliyuncs.com/media/c.wav"},
        ]
    }
    assert output_paths(output) == {"/media/a b.wav", "/media/c.wav"}
    assert output_paths({"result": {"file_url": "https://h/m/q.mp3?Expires=1"}}) == {"/m/q.mp3"}
    assert output_paths({"task_status": "FAILED", "code": "x"}) == set()


def test_default_settle_and_probe_settings() -> None:
    """The production defaults: settle 120 s, probe 60 s, lookback 24 h, timeout 30 s."""
    from core.settings import load_settings

    settings = load_settings()
    assert settings.submit_uncertain_settle_seconds == 120.0
    assert settings.dashscope_breaker_probe_seconds == 60.0
    assert settings.reconcile_lookback_seconds == 86_400
    assert DashScopeClient.from_settings(
        load_settings(dashscope_api_key="sk-x")
    )._http.timeout.read == pytest.approx(30.0)


def test_the_default_settle_time_keeps_a_lost_submit_open_for_120_s(
    make_sandbox: Callable[..., Sandbox], redis_client: redis.Redis
) -> None:
    """With SUBMIT_UNCERTAIN_SETTLE_SECONDS at its default, "not created" comes after 120 s."""
    from core.settings import load_settings
    from worker.ratelimit import query_limiter
    from worker.submission.uncertain import Intent, Resolver

    box = make_sandbox()
    settle = load_settings().submit_uncertain_settle_seconds
    client = DashScopeClient(box.api_url, box.config.api_key)
    resolver = Resolver(
        client, query_limiter(redis_client, 20), SubmissionStore(redis_client, 3600), settle
    )
    at = time.time() - 1
    intent = Intent(at, "fun-asr", {}, [], [], ["/media/x.wav"])
    assert resolver.resolve(intent, at + 60).settled is False
    assert resolver.resolve(intent, at + settle - 1).settled is False
    assert resolver.resolve(intent, at + settle + 1).settled is True
    assert intent.looks == 3
