"""``asr-ingest status`` and ``resubmit``, and file outcomes read from archive manifests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from asr_ingest.cli import main
from core.settings import Settings
from sandbox.server import Sandbox
from tests.fixtures.sandbox import wait_for
from tests.worker.submission.submit_support import make_media, submit_settings
from worker.submission.batching import plan_batches
from worker.submission.media import walk
from worker.submission.submissions import FileEntry, Submission
from worker.submission.submitter import Submitter, subtask_failures
from worker.submission.tracking import manifest_results


def _env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """Expose ``settings`` to the CLI through the environment, as a user would."""
    for name in (
        "redis_url",
        "media_url",
        "oss_endpoint",
        "oss_access_key_id",
        "dashscope_base_url",
    ):
        monkeypatch.setenv(name.upper(), str(getattr(settings, name)))
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "testing")
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-sandbox")
    monkeypatch.setenv("COLUMNS", "250")  # rich's width when not on a terminal


def _submit_one_task(settings: Settings, files: list[Path]) -> tuple[str, Submitter]:
    client = redis.Redis.from_url(settings.redis_url)
    accepted, _ = walk(files)
    submitter = Submitter.from_settings(settings, client)
    batches = plan_batches(accepted, "fun-asr", 100)
    run_id = submitter.store.create_run("fun-asr", {}, batches, [])
    task_id = submitter.submit_batch(run_id, 0)
    assert task_id is not None
    return task_id, submitter


@pytest.fixture
def cli_setup(
    tmp_path: Path,
    sample_paths: list[Path],
    make_sandbox: Callable[..., Sandbox],
    moto_endpoint: str,
    s3_bucket: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Sandbox, str, list[Path], Path]:
    """One finished task of 3 good files and 1 undecodable one; no event was received."""
    box = make_sandbox(use_ffprobe=False)
    settings = submit_settings(redis_url, moto_endpoint, s3_bucket, box)
    _env(monkeypatch, settings)
    good = make_media(tmp_path / "in", sample_paths, 3)
    broken = tmp_path / "in" / "broken.wav"
    broken.write_bytes(b"RIFF not really audio")
    task_id, _ = _submit_one_task(settings, [*good, broken])
    wait_for(lambda: box.state()["tasks"][task_id]["status"] == "SUCCEEDED", timeout=30)
    return box, task_id, good, broken


def test_status_by_task_and_by_file(cli_setup: tuple[Sandbox, str, list[Path], Path]) -> None:
    """status answers for a task id and for a local file it took; unknown ids fail."""
    _, task_id, good, _ = cli_setup
    runner = CliRunner()
    by_task = runner.invoke(main, ["status", task_id])
    assert by_task.exit_code == 0, by_task.output
    assert task_id in by_task.output and "fun-asr" in by_task.output
    assert good[0].name in by_task.output and "submitted" in by_task.output
    by_file = runner.invoke(main, ["status", str(good[1])])
    assert by_file.exit_code == 0 and task_id in by_file.output
    unknown = runner.invoke(main, ["status", "no-such-task"])
    assert unknown.exit_code == 1 and "no submission known" in unknown.output


def test_resubmit_sends_only_failed_files_once(
    cli_setup: tuple[Sandbox, str, list[Path], Path],
) -> None:
    """resubmit submits just the FAILED file as a new task; a second resubmit is refused."""
    box, task_id, _, _ = cli_setup
    runner = CliRunner()
    first = runner.invoke(main, ["resubmit", task_id])
    assert first.exit_code == 0, first.output
    submissions = [s for s in box.state()["submissions"] if s["status"] == 200]
    assert [s["files"] for s in submissions] == [4, 1]
    assert f"resubmitted as {submissions[1]['task_id']}" in first.output
    again = runner.invoke(main, ["resubmit", task_id])
    assert again.exit_code == 1 and "resubmitted before" in again.output
    assert len(box.state()["submissions"]) == 2


def test_submit_refuses_unknown_model_and_bad_parameters(tmp_path: Path) -> None:
    """submit exits 1 naming an unknown model or a parameter of the wrong type."""
    runner = CliRunner()
    model = runner.invoke(main, ["submit", str(tmp_path), "--model", "whisper-1"])
    assert model.exit_code == 1 and "whisper-1" in model.output
    param = runner.invoke(
        main, ["submit", str(tmp_path), "-m", "fun-asr", "--param", "channel_id=0"]
    )
    assert param.exit_code == 1 and "channel_id" in param.output


def _sub(*keys: str) -> Submission:
    files = [FileEntry(f"/local/{k}", k, 1, k) for k in keys]
    return Submission("t", "fun-asr", "", 0, {}, 0.0, files)


def test_manifest_results_match_files_by_url_path() -> None:
    """Manifest entries map back to our object keys with their archive keys and failure reasons."""
    manifest = {
        "files": [
            {
                "file_url": "http://oss/b/media/a.wav",
                "subtask_status": "SUCCEEDED",
                "key": "t/results/0000.json",
            },
            {
                "file_url": "http://oss/b/media/b.wav",
                "subtask_status": "FAILED",
                "key": None,
                "code": "InvalidFile.DecodeFailed",
                "message": "bad",
            },
            {
                "file_url": "http://oss/b/media/c.wav",
                "subtask_status": "SUCCEEDED",
                "key": None,
                "error": {"reason": "result_too_large", "message": "x"},
            },
        ]
    }
    results = manifest_results(manifest, _sub("media/a.wav", "media/b.wav", "media/c.wav", "d"))
    assert results == {
        "media/a.wav": (True, "", "t/results/0000.json"),
        "media/b.wav": (False, "InvalidFile.DecodeFailed: bad", ""),
        "media/c.wav": (False, "result_too_large", ""),
        "d": (False, "failed", ""),
    }
    failed_task = {"files": [], "archive_error": {"reason": "unknown_model"}}
    assert manifest_results(failed_task, _sub("k")) == {"k": (False, "unknown_model", "")}


def test_subtask_failures_for_batches_and_whole_tasks() -> None:
    """Per-file FAILED results are found by URL; a FAILED task without results fails all."""
    files = _sub("media/a.wav", "media/b.wav").files
    output = {
        "task_status": "SUCCEEDED",
        "results": [
            {"file_url": "https://h/bkt/media/a.wav?Signature=x", "subtask_status": "SUCCEEDED"},
            {
                "file_url": "https://h/bkt/media/b.wav?Signature=y",
                "subtask_status": "FAILED",
                "code": "C",
                "message": "M",
            },
        ],
    }
    assert subtask_failures(output, files) == {"media/b.wav": "C: M"}
    whole = {"task_status": "FAILED", "code": "X", "message": "Y"}
    assert subtask_failures(whole, files) == {"media/a.wav": "X: Y", "media/b.wav": "X: Y"}
    assert subtask_failures({"task_status": "RUNNING"}, files) == {}
