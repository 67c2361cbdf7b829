"""End to end with a crash: the worker is SIGKILLed halfway through and restarted.

Real processes: gunicorn webhook and a Celery worker with beat under the supervisor of
``asr-ingest run`` (:class:`asr_ingest.stack.Stack`); Redis from the session fixture; the
sandbox and moto in this process. The outcome must equal the crash-free one: every file
archived once to both destinations, byte-identical, no signed query strings anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from asr_ingest.outcomes import follow_runs
from asr_ingest.run import submit_round_robin
from asr_ingest.stack import Stack
from asr_ingest.starters import free_port, webhook_spec, worker_spec
from core.settings import load_settings
from sandbox.server import Sandbox
from tests.e2e.support import (
    MODELS,
    assert_archived_once,
    distinct_media,
    local_manifests,
    s3_objects,
    signed_query_hits,
    tree_blobs,
)
from tests.e2e.test_run import EXPECTED_TASKS, FILES, run_env
from tests.fixtures.sandbox import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A supervisor whose children's logs go to ``tmp_path/logs``; stopped after the test."""
    with Stack(sink=lambda _line: None, log_dir=tmp_path / "logs", handle_signals=False) as s:
        yield s


def test_worker_killed_halfway_changes_nothing(
    tmp_path: Path,
    redis_url: str,
    moto_endpoint: str,
    s3_bucket: str,
    s3_client: Any,
    make_sandbox: Callable[..., Sandbox],
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL of the worker once half the tasks are archived: after a restart, all is archived."""
    media = distinct_media(tmp_path / "media", FILES)
    web_port = free_port()
    public_url = f"http://127.0.0.1:{web_port}/callbacks/eventbridge"
    box = make_sandbox(callback_url=public_url, duplicates=1, drop_fraction=0.1)
    archive = tmp_path / "archive"
    env = run_env(box, public_url, archive, s3_bucket, moto_endpoint)
    # Test-scale recovery times: redelivery after 10 s, a dead lease noticed after 20 s.
    env.update(
        REDIS_URL=redis_url,
        BROKER_VISIBILITY_TIMEOUT_SECONDS="10",
        ARCHIVE_STUCK_AFTER_SECONDS="20",
        # a message the killed worker had taken off the queue but not yet recorded (kombu's
        # window between BRPOP and its unacked entry) is lost to the broker: the sweep
        # publishes its open receipt again after this long (default 1800 s, test_service.py)
        ARCHIVE_REENQUEUE_AFTER_SECONDS="20",
        # consistent with it (worker/timeouts.py): lease below, countdowns at most half
        ARCHIVE_LEASE_SECONDS="3",
        ARCHIVE_RETRY_MAX_SECONDS="5",
        DASHSCOPE_BREAKER_PROBE_SECONDS="5",
    )
    stack.start_many(
        [webhook_spec(web_port, env), worker_spec(env, beat_schedule=tmp_path / "beat")]
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    reports = submit_round_robin(settings, [str(tmp_path / "media")], MODELS, {}, force=False)

    # Kill once every batch is submitted: a kill between DashScope's answer and our record of
    # it would make the redelivered batch a second task (no idempotency key exists there).
    wait_for(lambda: len(box.state()["submissions"]) == EXPECTED_TASKS, timeout=120)
    wait_for(lambda: len(local_manifests(archive)) >= EXPECTED_TASKS // 2, timeout=120)
    stack.kill("worker")
    stack.restart("worker")
    outcomes = follow_runs(settings, reports, Console(file=open(os.devnull, "w")), 240)  # noqa: SIM115  # closed with the process

    assert [o.status for _, o in outcomes] == ["succeeded"] * FILES
    s3 = s3_objects(s3_client, s3_bucket, "results/")
    assert_archived_once(box, archive, s3, EXPECTED_TASKS, len(media))
    assert signed_query_hits([*tree_blobs(archive, tmp_path / "logs"), *s3.items()]) == []
