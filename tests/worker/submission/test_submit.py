"""The submitter against real parts: Redis, moto as OSS, the sandbox as DashScope."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import redis

from core.settings import Settings
from sandbox.server import Sandbox
from tests.fixtures.objectstore import MotoProxy
from tests.fixtures.sandbox import wait_for
from tests.worker.submission.submit_support import (
    assert_within_rate,
    make_bad_media,
    make_media,
    submit_settings,
)
from worker.submission.batching import plan_batches
from worker.submission.media import walk
from worker.submission.submissions import FileState, SubmissionStore
from worker.submission.submitter import Submitter


def _run(settings: Settings, paths: list[Path], model: str, force: bool = False) -> str:
    """Plan a run like ``asr-ingest submit`` and submit every batch in this thread."""
    client = redis.Redis.from_url(settings.redis_url)
    accepted, rejected = walk(paths)
    batches = plan_batches(accepted, model, settings.submit_batch_size)
    submitter = Submitter.from_settings(settings, client)
    run_id = submitter.store.create_run(model, {}, batches, rejected, force=force)
    for n in range(len(batches)):
        submitter.submit_batch(run_id, n)
    return run_id


def _finished(box: Sandbox) -> Callable[[], bool]:
    def check() -> bool:
        tasks = box.state()["tasks"].values()
        return bool(tasks) and all(t["status"] in ("SUCCEEDED", "FAILED") for t in tasks)

    return check


def test_250_files_in_three_batches_all_downloaded(
    tmp_path: Path,
    sample_paths: list[Path],
    make_sandbox: Callable[..., Sandbox],
    moto_proxy: MotoProxy,
    s3_bucket: str,
    redis_url: str,
) -> None:
    """250 mixed files (+ bad ones) become tasks of 100, 100, 50 whose URLs the sandbox fetches."""
    box = make_sandbox(use_ffprobe=False)
    settings = submit_settings(redis_url, moto_proxy.url, s3_bucket, box)
    media = make_media(tmp_path / "in", sample_paths, 250)
    bad = make_bad_media(tmp_path / "in" / "bad")
    run_id = _run(settings, [tmp_path / "in"], "fun-asr")
    accepted = [s for s in box.state()["submissions"] if s["status"] == 200]
    assert sorted(s["files"] for s in accepted) == [50, 100, 100]
    wait_for(_finished(box), timeout=60)
    subtasks = [s for t in box.state()["tasks"].values() for s in t["subtasks"]]
    assert len(subtasks) == 250
    assert {s["subtask_status"] for s in subtasks} == {"SUCCEEDED"}
    store = SubmissionStore(redis.Redis.from_url(redis_url), 3600)
    states = store.file_states(run_id)
    assert {p: s.reason for p, s in states.items() if s.state == "rejected"} == bad
    submitted = {p for p, s in states.items() if s.state == "submitted"}
    assert submitted == {str(p) for p in media}
    task_of = {str(p): store.task_for_file(str(p)) for p in media}
    assert set(task_of.values()) == {s["task_id"] for s in accepted}


def test_qwen_sends_one_file_per_task(
    tmp_path: Path,
    sample_paths: list[Path],
    make_sandbox: Callable[..., Sandbox],
    moto_endpoint: str,
    s3_bucket: str,
    redis_url: str,
) -> None:
    """Qwen filetrans files go one per task, and the sandbox accepts the file_url body."""
    box = make_sandbox(use_ffprobe=False)
    settings = submit_settings(redis_url, moto_endpoint, s3_bucket, box)
    make_media(tmp_path / "q", sample_paths, 3)
    _run(settings, [tmp_path / "q"], "qwen3-asr-flash-filetrans")
    submissions = box.state()["submissions"]
    assert [(s["status"], s["files"]) for s in submissions] == [(200, 1)] * 3
    wait_for(_finished(box), timeout=30)
    statuses = [s["subtask_status"] for t in box.state()["tasks"].values() for s in t["subtasks"]]
    assert statuses == ["SUCCEEDED"] * 3


def test_second_run_uploads_and_submits_nothing_unless_forced(
    tmp_path: Path,
    sample_paths: list[Path],
    make_sandbox: Callable[..., Sandbox],
    moto_proxy: MotoProxy,
    s3_bucket: str,
    redis_url: str,
) -> None:
    """Re-submitting a directory PUTs nothing and submits nothing; --force submits, still no PUT."""
    box = make_sandbox(use_ffprobe=False)
    settings = submit_settings(redis_url, moto_proxy.url, s3_bucket, box, submit_batch_size=4)
    make_media(tmp_path / "in", sample_paths, 10)
    _run(settings, [tmp_path / "in"], "paraformer-v2")
    puts, submits = moto_proxy.count("PUT", f"/{s3_bucket}/"), len(box.state()["submissions"])
    assert (puts, submits) == (10, 3)
    run_id = _run(settings, [tmp_path / "in"], "paraformer-v2")
    assert moto_proxy.count("PUT", f"/{s3_bucket}/") == 10
    assert len(box.state()["submissions"]) == 3
    store = SubmissionStore(redis.Redis.from_url(redis_url), 3600)
    assert {s.state for s in store.file_states(run_id).values()} == {"duplicate"}
    _run(settings, [tmp_path / "in"], "paraformer-v2", force=True)
    assert moto_proxy.count("PUT", f"/{s3_bucket}/") == 10
    assert len(box.state()["submissions"]) == 6


def test_four_workers_never_exceed_the_submit_rate(
    tmp_path: Path,
    sample_paths: list[Path],
    make_sandbox: Callable[..., Sandbox],
    moto_endpoint: str,
    s3_bucket: str,
    redis_url: str,
) -> None:
    """Four concurrent submitters share the Redis bucket: ≤ rate submissions in any 1 s window."""
    box = make_sandbox(use_ffprobe=False, pending_seconds=30)
    rate = 8
    settings = submit_settings(
        redis_url,
        moto_endpoint,
        s3_bucket,
        box,
        submit_rates=f"paraformer={rate}",
        submit_batch_size=1,
    )
    files = make_media(tmp_path / "in", sample_paths, 24)
    client = redis.Redis.from_url(redis_url)
    accepted, _ = walk(files)
    batches = plan_batches(accepted, "paraformer-v2", 1)
    run_id = SubmissionStore(client, 3600).create_run("paraformer-v2", {}, batches, [])
    pending = list(range(len(batches)))
    lock = threading.Lock()

    def work() -> None:
        submitter = Submitter.from_settings(settings, redis.Redis.from_url(redis_url))
        while True:
            with lock:
                if not pending:
                    return
                n = pending.pop()
            submitter.submit_batch(run_id, n)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    times = sorted(s["at"] for s in box.state()["submissions"] if s["status"] == 200)
    assert len(times) == 24
    assert_within_rate(times, rate)


def test_throttling_from_dashscope_is_retried(
    tmp_path: Path,
    sample_paths: list[Path],
    make_sandbox: Callable[..., Sandbox],
    moto_endpoint: str,
    s3_bucket: str,
    redis_url: str,
) -> None:
    """When DashScope's own limit is lower than ours, its 429s are retried until accepted."""
    box = make_sandbox(use_ffprobe=False, submit_rps={"paraformer": 4.0}, pending_seconds=30)
    settings = submit_settings(
        redis_url,
        moto_endpoint,
        s3_bucket,
        box,
        submit_rates="paraformer=40",
        submit_batch_size=1,
    )
    make_media(tmp_path / "in", sample_paths, 10)
    run_id = _run(settings, [tmp_path / "in"], "paraformer-v2")
    statuses = [s["status"] for s in box.state()["submissions"]]
    assert statuses.count(200) == 10
    assert statuses.count(429) >= 1
    store = SubmissionStore(redis.Redis.from_url(redis_url), 3600)
    assert {s.state for s in store.file_states(run_id).values()} == {"submitted"}


def test_redelivered_batch_after_crash_marks_its_files_submitted(
    tmp_path: Path,
    sample_paths: list[Path],
    make_sandbox: Callable[..., Sandbox],
    moto_endpoint: str,
    s3_bucket: str,
    redis_url: str,
) -> None:
    """A batch recorded but killed before its file marks is completed, not submitted twice."""
    box = make_sandbox(use_ffprobe=False)
    settings = submit_settings(redis_url, moto_endpoint, s3_bucket, box)
    files = make_media(tmp_path / "in", sample_paths, 2)
    client = redis.Redis.from_url(redis_url)
    store = SubmissionStore(client, 3600)
    accepted, _ = walk(files)
    run_id = store.create_run("fun-asr", {}, plan_batches(accepted, "fun-asr", 100), [])
    submitter = Submitter.from_settings(settings, client)
    task_id = submitter.submit_batch(run_id, 0)
    path = str(files[0].resolve())
    store.set_file(run_id, path, FileState("uploaded", key=store.file_states(run_id)[path].key))

    assert submitter.submit_batch(run_id, 0) == task_id
    assert store.file_states(run_id)[path].state == "submitted"
    assert len(box.state()["submissions"]) == 1
