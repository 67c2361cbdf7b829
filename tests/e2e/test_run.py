"""End to end: ``asr-ingest run`` on 40 real media files, every callback twice, 10 % dropped.

Real processes throughout: ``asr-ingest run`` is a child process that starts an embedded Redis,
the gunicorn webhook and a Celery worker with beat; the sandbox (DashScope + EventBridge)
and moto (S3 for the archive, OSS for the media) run in this test process and talk HTTP.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from asr_ingest.starters import free_port, script
from sandbox.server import Sandbox
from tests.e2e.support import (
    MODELS,
    assert_archived_once,
    distinct_media,
    s3_objects,
    signed_query_hits,
    tree_blobs,
)

pytestmark = pytest.mark.e2e

FILES = 40
# 40 files round-robin over three models: Fun-ASR 14 and Paraformer 13 in one batch each,
# Qwen filetrans 13 tasks of one file.
EXPECTED_TASKS = 1 + 1 + 13


def run_env(
    box: Sandbox, public_url: str, archive: Path, s3_bucket: str, moto: str
) -> dict[str, str]:
    """The environment of ``asr-ingest run``: sandbox, moto as S3 and OSS, no Redis."""
    media_bucket = f"media-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto, region_name="us-east-1").create_bucket(
        Bucket=media_bucket
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_"))}
    env.update(box.env)
    env.update(
        WEBHOOK_PUBLIC_URL=public_url,
        ARCHIVE_URLS=f"{archive.as_uri()},s3://{s3_bucket}/results",
        S3_ENDPOINT_URL=moto,
        MEDIA_URL=f"oss://{media_bucket}/media",
        OSS_ENDPOINT=moto,
        OSS_ACCESS_KEY_ID="testing",
        OSS_ACCESS_KEY_SECRET="testing",
        RECONCILE_AFTER_SECONDS="3",
        SWEEP_INTERVAL_SECONDS="2",
        LOG_FORMAT="json",
    )
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``asr-ingest ARGS`` as a child process; its completed state (output captured)."""
    return subprocess.run(
        [script("asr-ingest"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )


def test_run_archives_every_file_once_to_local_and_s3(
    tmp_path: Path,
    moto_endpoint: str,
    s3_bucket: str,
    s3_client: Any,
    make_sandbox: Callable[..., Sandbox],
) -> None:
    """40 files, duplicate and dropped callbacks: all archived twice over, byte-identical, once."""
    media = distinct_media(tmp_path / "media", FILES)
    public_url = f"http://127.0.0.1:{free_port()}/callbacks/eventbridge"
    box = make_sandbox(callback_url=public_url, duplicates=1, drop_fraction=0.1)
    archive, logs = tmp_path / "archive", tmp_path / "logs"
    env = run_env(box, public_url, archive, s3_bucket, moto_endpoint)
    models = [arg for model in MODELS for arg in ("--model", model)]
    args = ["run", str(tmp_path / "media"), *models, "--log-dir", str(logs), "--timeout", "300"]

    done = run_cli(args, env, tmp_path)

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert f"{FILES} of {FILES} files archived" in done.stdout
    s3 = s3_objects(s3_client, s3_bucket, "results/")
    assert_archived_once(box, archive, s3, EXPECTED_TASKS, len(media))
    blobs = tree_blobs(archive, logs)
    blobs += [*s3.items(), ("stdout", done.stdout.encode()), ("stderr", done.stderr.encode())]
    assert signed_query_hits(blobs) == []


def test_run_exits_nonzero_and_reports_bad_files(
    tmp_path: Path,
    moto_endpoint: str,
    s3_bucket: str,
    make_sandbox: Callable[..., Sandbox],
) -> None:
    """A rejected file makes the run exit 1 and appears in the table with its reason."""
    distinct_media(tmp_path / "media", 2)
    (tmp_path / "media" / "notes.txt").write_text("not audio")
    public_url = f"http://127.0.0.1:{free_port()}/callbacks/eventbridge"
    box = make_sandbox(callback_url=public_url)
    env = run_env(box, public_url, tmp_path / "archive", s3_bucket, moto_endpoint)

    done = run_cli(["run", str(tmp_path / "media"), "--model", "fun-asr", "--quiet"], env, tmp_path)

    assert done.returncode == 1, done.stdout[-3000:]
    assert "unsupported_format" in done.stdout
    assert "2 of 3 files archived" in done.stdout
