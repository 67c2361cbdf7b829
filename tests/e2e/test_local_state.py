"""End to end: ``asr-ingest run`` remembers its state in ASR_INGEST_HOME, and the commands after it.

Real processes: ``asr-ingest run`` is a child process that starts an embedded Redis (persisted
in the test's home), the gunicorn webhook and a Celery worker with beat; the sandbox and moto
run in this test process and talk HTTP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from asr_ingest.starters import free_port, script
from sandbox.server import Sandbox
from tests.e2e.support import distinct_media
from tests.e2e.test_run import run_cli, run_env

pytestmark = pytest.mark.e2e

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def json_rows(stdout: str) -> list[dict[str, object]]:
    """The objects of ``asr-ingest run --json`` output."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def local_run(
    tmp_path: Path, moto_endpoint: str, s3_bucket: str, make_sandbox: Callable[..., Sandbox]
) -> tuple[Sandbox, dict[str, str]]:
    """A sandbox and the environment of runs in ``tmp_path`` (home ``tmp_path/.asr-ingest``)."""
    public_url = f"http://127.0.0.1:{free_port()}/callbacks/eventbridge"
    box = make_sandbox(callback_url=public_url)
    env = run_env(box, public_url, tmp_path / "archive", s3_bucket, moto_endpoint)
    env["COLUMNS"] = "80"
    return box, env


def test_rerun_submits_nothing_and_commands_read_the_state_after(
    tmp_path: Path, local_run: tuple[Sandbox, dict[str, str]]
) -> None:
    """A second run in one home submits nothing and shows the same task ids; status, show,
    export and dlq work once the run has ended."""
    box, env = local_run
    media = distinct_media(tmp_path / "media", 3)
    args = ["run", str(tmp_path / "media"), "--model", "fun-asr", "--json"]

    first = run_cli(args, env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(args, env, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]

    one, two = json_rows(first.stdout), json_rows(second.stdout)
    assert len(one) == 3 and all(row["status"] == "succeeded" for row in one)
    assert {r["file"]: r["task_id"] for r in one} == {r["file"]: r["task_id"] for r in two}
    assert len(box.state()["submissions"]) == 1  # one batch, submitted once
    recorded = {
        entry["media"]["path"]
        for path in (tmp_path / "archive").glob("*/manifest.json")
        for entry in json.loads(path.read_bytes())["files"]
    }
    assert recorded == {str(m.resolve()) for m in media}  # the archive names each recording
    assert (tmp_path / ".asr-ingest" / "redis").is_dir()
    assert (tmp_path / ".asr-ingest" / "logs" / "worker.log").is_file()

    task_id = str(one[0]["task_id"])
    status = run_cli(["status", task_id], env, tmp_path)
    assert status.returncode == 0 and "archived" in status.stdout, status.stdout + status.stderr
    shown = run_cli(["show", str(media[0])], env, tmp_path)
    assert shown.returncode == 0 and shown.stdout.strip(), shown.stderr
    out = tmp_path / "srt"
    exported = run_cli(
        ["export", str(tmp_path / "media"), "--format", "srt", "--out", str(out)], env, tmp_path
    )
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{m.stem}.srt" for m in media)
    assert "-->" in (out / f"{media[0].stem}.srt").read_text()
    dead = run_cli(["dlq", "list"], env, tmp_path)
    assert dead.returncode == 0 and "0 dead letter(s)" in dead.stdout


def test_force_submits_again(tmp_path: Path, local_run: tuple[Sandbox, dict[str, str]]) -> None:
    """``--force`` resubmits files a previous run already took (new task ids)."""
    box, env = local_run
    distinct_media(tmp_path / "media", 2)
    args = ["run", str(tmp_path / "media"), "--model", "fun-asr", "--json"]
    first = run_cli(args, env, tmp_path)
    forced = run_cli([*args, "--force"], env, tmp_path)
    assert first.returncode == forced.returncode == 0, forced.stderr[-3000:]
    before = {r["task_id"] for r in json_rows(first.stdout)}
    after = {r["task_id"] for r in json_rows(forced.stdout)}
    assert before.isdisjoint(after) and len(box.state()["submissions"]) == 2


def test_piped_table_fits_80_columns(
    tmp_path: Path, local_run: tuple[Sandbox, dict[str, str]]
) -> None:
    """Piped at 80 columns, no line is wider, task ids are whole, the table comes last."""
    _, env = local_run
    distinct_media(tmp_path / "media", 3)
    done = run_cli(["run", str(tmp_path / "media"), "--model", "fun-asr"], env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len([line for line in lines if UUID.search(line)]) == 3
    assert lines[-1] == "3 of 3 files archived"
    assert "worker |" not in done.stdout  # child logs go to files unless --verbose


def test_configured_redis_is_used(
    tmp_path: Path, local_run: tuple[Sandbox, dict[str, str]], redis_url: str, redis_client: object
) -> None:
    """With REDIS_URL set, the run uses that Redis and starts none of its own."""
    _, env = local_run
    distinct_media(tmp_path / "media", 1)
    done = run_cli(
        ["run", str(tmp_path / "media"), "--model", "fun-asr"],
        {**env, "REDIS_URL": redis_url},
        tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not (tmp_path / ".asr-ingest" / "redis").exists()
    assert redis_client.keys("asr:receipt:*")  # type: ignore[attr-defined]  # a redis.Redis


def test_bad_options_and_settings_fail_before_anything_starts(
    tmp_path: Path, local_run: tuple[Sandbox, dict[str, str]]
) -> None:
    """A bad --model, --param or environment value: one line naming it, nothing started."""
    _, env = local_run
    started = time.monotonic()
    model = run_cli(["run", "--model", "whisper-1"], env, tmp_path)
    param = run_cli(["run", "--param", "channel_id=notjson"], env, tmp_path)
    setting = run_cli(["run"], {**env, "DEDUPE_TTL_SECONDS": "soon"}, tmp_path)
    assert time.monotonic() - started < 15
    assert model.returncode == 2 and "whisper-1" in model.stderr and "--model" in model.stderr
    assert param.returncode == 2 and "--param" in param.stderr
    assert setting.returncode == 1 and "DEDUPE_TTL_SECONDS" in setting.stderr
    assert "Traceback" not in model.stderr + param.stderr + setting.stderr
    assert not (tmp_path / ".asr-ingest").exists()


def test_submit_of_only_rejected_paths_fails(
    tmp_path: Path, local_run: tuple[Sandbox, dict[str, str]], redis_url: str
) -> None:
    """``asr-ingest submit`` exits non-zero when no path was accepted."""
    _, env = local_run
    (tmp_path / "notes.txt").write_text("not audio")
    done = run_cli(
        ["submit", str(tmp_path / "notes.txt"), "--model", "fun-asr"],
        {**env, "REDIS_URL": redis_url},
        tmp_path,
    )
    assert done.returncode == 1 and "no file was accepted" in done.stderr


def test_ctrl_c_exits_130_and_names_tasks_in_flight(
    tmp_path: Path, moto_endpoint: str, s3_bucket: str, make_sandbox: Callable[..., Sandbox]
) -> None:
    """SIGINT while tasks run: exit 130, the in-flight task ids printed, children stopped."""
    public_url = f"http://127.0.0.1:{free_port()}/callbacks/eventbridge"
    box = make_sandbox(callback_url=public_url, min_running_seconds=600.0)
    env = run_env(box, public_url, tmp_path / "archive", s3_bucket, moto_endpoint)
    distinct_media(tmp_path / "media", 2)
    child = subprocess.Popen(
        [script("asr-ingest"), "run", str(tmp_path / "media"), "--model", "fun-asr"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not box.state()["submissions"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert box.state()["submissions"], "nothing was submitted"
    time.sleep(1.0)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stdout[-2000:] + stderr[-2000:]
    task_id = box.state()["submissions"][0]["task_id"]
    assert f"in flight: {task_id}" in stdout
    assert not _answers(tmp_path)  # the embedded Redis was stopped with the rest


def _answers(tmp_path: Path) -> bool:
    """True when the embedded Redis of ``tmp_path``'s home still answers."""
    from asr_ingest.home import answers, socket_url

    return answers(socket_url((tmp_path / ".asr-ingest").resolve()))


def test_dropped_callbacks_are_reconciled_within_seconds(tmp_path: Path) -> None:
    """The README's --drop-fraction example (here every callback dropped) ends in under 30 s."""
    distinct_media(tmp_path / "media", 2)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_", "DASHSCOPE_"))
    }
    env.update(LOG_FORMAT="json", COLUMNS="120")
    args = ["run", str(tmp_path / "media"), "--model", "fun-asr", "--sandbox-arg=--drop-fraction=1"]
    started = time.monotonic()
    done = run_cli(args, env, tmp_path)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 of 2 files archived" in done.stdout
    assert elapsed < 30, f"{elapsed:.1f} s"
