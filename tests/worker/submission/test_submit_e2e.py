"""End to end: ``asr-ingest submit`` → real Celery worker → sandbox → gunicorn webhook → archive.

Real processes and HTTP throughout: the CLI and the worker are child processes, the webhook runs
under gunicorn, the sandbox (DashScope + EventBridge) downloads the media from moto through
the signed URLs and delivers signed callbacks; results land in a local archive directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from asr_ingest.stack import Stack
from asr_ingest.starters import free_port, webhook_spec
from asr_ingest.submit_cmd import submit_paths, wait_for
from core.queues import RECONCILE_TASK, SUBMIT_QUEUE
from core.settings import load_settings
from sandbox.server import Sandbox
from tests.fixtures.worker import WorkerFactory, broker_url_for
from tests.worker.submission.submit_support import assert_within_rate, make_bad_media, make_media
from worker.submission.submissions import SubmissionStore

pytestmark = pytest.mark.e2e


class Pipeline:
    """Sandbox, webhook and worker wired together; ``env`` configures any further process."""

    def __init__(self, box: Sandbox, env: dict[str, str], archive: Path) -> None:
        self.box = box
        self.env = env
        self.archive = archive

    def manifests(self) -> dict[str, dict[str, object]]:
        """task_id → manifest of every fully archived task."""
        return {
            p.parent.name: json.loads(p.read_text()) for p in self.archive.glob("*/manifest.json")
        }


@pytest.fixture
def start_pipeline(
    tmp_path: Path,
    redis_url: str,
    moto_endpoint: str,
    s3_bucket: str,
    make_sandbox: Callable[..., Sandbox],
    celery_worker_factory: WorkerFactory,
) -> Iterator[Callable[..., Pipeline]]:
    """Starts sandbox (with ``sandbox_changes``), gunicorn webhook and a 4-thread worker."""
    stack = Stack(sink=lambda line: None, handle_signals=False, grace_s=5)

    def start(submit_batch_size: int = 100, **sandbox_changes: object) -> Pipeline:
        port = free_port()
        callback = f"http://127.0.0.1:{port}/callbacks/eventbridge"
        box = make_sandbox(callback_url=callback, use_ffprobe=False, **sandbox_changes)
        archive = tmp_path / "archive"
        env = {
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": broker_url_for(redis_url),
            "WEBHOOK_PUBLIC_URL": callback,
            "EVENTBRIDGE_CERT_URL_REGEX": box.cert_url_regex,
            "RESULT_URL_REGEX": box.result_url_regex,
            "ARCHIVE_URLS": f"file://{archive}",
            "MEDIA_URL": f"oss://{s3_bucket}/media",
            "OSS_ENDPOINT": moto_endpoint,
            "OSS_ACCESS_KEY_ID": "testing",
            "OSS_ACCESS_KEY_SECRET": "testing",
            "DASHSCOPE_API_KEY": box.config.api_key,
            "DASHSCOPE_BASE_URL": box.api_url,
            "DASHSCOPE_QUERY_QPS": "5",
            "SUBMIT_RATES": "fun-asr=20,paraformer=20,qwen3-asr-flash-filetrans=20",
            "SUBMIT_BATCH_SIZE": str(submit_batch_size),
            "RECONCILE_AFTER_SECONDS": "1",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
            "LOG_FORMAT": "json",
        }
        stack.start(webhook_spec(port, env, workers=2))
        celery_worker_factory(env, concurrency=4)
        return Pipeline(box, env, archive)

    yield start
    stack.stop_all()


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("asr-ingest")), *args]
    full = {**os.environ, **env, "COLUMNS": "250"}
    return subprocess.run(command, env=full, capture_output=True, text=True, timeout=timeout)


def test_submit_wait_archives_every_good_file_and_reports_bad_ones(
    tmp_path: Path, sample_paths: list[Path], start_pipeline: Callable[..., Pipeline]
) -> None:
    """250 mixed files + bad ones: 3 tasks, every good file archived, bad ones listed, exit 1."""
    pipeline = start_pipeline()
    media = make_media(tmp_path / "in", sample_paths, 250)
    bad = make_bad_media(tmp_path / "in" / "bad")
    done = _cli(
        pipeline.env,
        "submit",
        str(tmp_path / "in"),
        "--model",
        "fun-asr",
        "--wait",
        "--timeout",
        "100",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    for path, reason in bad.items():
        assert Path(path).name in done.stdout and reason in done.stdout
    assert done.stdout.count("succeeded") == 250
    manifests = pipeline.manifests()
    assert len(manifests) == 3
    files = [f for m in manifests.values() for f in m["files"]]  # type: ignore[attr-defined]
    assert len(files) == 250 == len(media)
    assert all(f["subtask_status"] == "SUCCEEDED" and f["key"] for f in files)
    assert all("Signature" not in f["file_url"] for f in files)


def test_lost_callbacks_are_reconciled_within_the_query_budget(
    tmp_path: Path,
    sample_paths: list[Path],
    start_pipeline: Callable[..., Pipeline],
    redis_url: str,
) -> None:
    """With 30 % of callbacks dropped, reconciliation archives every task; no query 429s."""
    pipeline = start_pipeline(submit_batch_size=2, drop_fraction=0.3)
    make_media(tmp_path / "in", sample_paths, 40)
    done = _cli(pipeline.env, "submit", str(tmp_path / "in"), "--model", "paraformer-v2")
    assert done.returncode == 0, done.stderr
    app = Celery(broker=broker_url_for(redis_url), set_as_current=False)
    deadline = time.monotonic() + 90
    while len(pipeline.manifests()) < 20 and time.monotonic() < deadline:
        app.send_task(RECONCILE_TASK, queue=SUBMIT_QUEUE)  # what beat does every 30 s
        time.sleep(1.0)
    app.close()
    state = pipeline.box.state()
    assert len(state["tasks"]) == 20
    assert len(state["dropped"]) >= 1
    manifests = pipeline.manifests()
    assert set(manifests) == set(state["tasks"])
    reconciled = {t for t, m in manifests.items() if m["source"] == "reconciliation"}
    assert reconciled >= set(state["dropped"])
    queries = sorted(q["at"] for q in state["queries"])
    assert {q["status"] for q in state["queries"]} <= {200}
    qps = 5.0  # DASHSCOPE_QUERY_QPS; the shared bucket holds one second of tokens
    for i, start in enumerate(queries):
        for j in range(i, len(queries)):
            assert j - i + 1 <= qps + qps * (queries[j] - start) + 1
    client = redis.Redis.from_url(redis_url)
    assert all(client.zscore("asr:submissions:due", t) is None for t in state["dropped"])
    client.close()


def test_batches_fail_with_a_reason_when_media_cannot_be_hosted(
    tmp_path: Path,
    sample_paths: list[Path],
    redis_url: str,
    celery_worker_factory: WorkerFactory,
) -> None:
    """A worker without MEDIA_URL fails each planned file with bad_media_url; wait_for ends."""
    celery_worker_factory({"MEDIA_URL": "", "DASHSCOPE_API_KEY": "sk-x"}, concurrency=2)
    make_media(tmp_path / "in", sample_paths, 3)
    settings = load_settings(
        redis_url=redis_url, celery_broker_url=broker_url_for(redis_url), submit_batch_size=2
    )
    report = submit_paths(settings, [str(tmp_path / "in")], "fun-asr", {})
    assert (report.accepted, report.batches) == (3, 2)
    outcomes = wait_for(settings, report.run_id, timeout_s=30, poll_s=0.2)
    assert [(o.status, o.reason) for o in outcomes] == [("failed", "bad_media_url")] * 3


def test_two_worker_processes_share_the_submit_rate(
    tmp_path: Path,
    sample_paths: list[Path],
    redis_url: str,
    moto_endpoint: str,
    s3_bucket: str,
    make_sandbox: Callable[..., Sandbox],
    celery_worker_factory: WorkerFactory,
) -> None:
    """Two worker processes of 2 threads submit 24 batches at <= 8/s in any 1 s window."""
    box = make_sandbox(use_ffprobe=False, pending_seconds=60)
    rate = 8
    env = {
        "MEDIA_URL": f"oss://{s3_bucket}/media",
        "OSS_ENDPOINT": moto_endpoint,
        "OSS_ACCESS_KEY_ID": "testing",
        "OSS_ACCESS_KEY_SECRET": "testing",
        "DASHSCOPE_API_KEY": box.config.api_key,
        "DASHSCOPE_BASE_URL": box.api_url,
        "SUBMIT_RATES": f"paraformer={rate}",
    }
    for _ in range(2):
        celery_worker_factory(env, concurrency=2)
    make_media(tmp_path / "in", sample_paths, 24)
    settings = load_settings(
        redis_url=redis_url, celery_broker_url=broker_url_for(redis_url), submit_batch_size=1
    )
    report = submit_paths(settings, [str(tmp_path / "in")], "paraformer-v2", {})
    store = SubmissionStore(redis.Redis.from_url(redis_url), 3600)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = store.run_info(report.run_id)
        if info is not None and info["submitted"] == 24:
            break
        time.sleep(0.2)
    times = sorted(s["at"] for s in box.state()["submissions"] if s["status"] == 200)
    assert len(times) == 24
    assert_within_rate(times, rate)
