"""The process supervisor: prefixed output, readiness, clean stop, kill and restart, no orphans."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from asr_ingest.stack import ChildSpec, Stack, StackError
from asr_ingest.starters import (
    broker_url_for,
    free_port,
    moto_spec,
    redis_spec,
    sandbox_env,
    sandbox_spec,
    worker_spec,
)

PY = sys.executable

# A child that forks a grandchild (sleeping), reports both pids, and sleeps.
FAMILY = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(f"pids {os.getpid()} {grandchild.pid}", flush=True)
time.sleep(60)
"""


def python(name: str, code: str, **kwargs: object) -> ChildSpec:
    """A spec running ``code`` in a fresh interpreter."""
    return ChildSpec(name, [PY, "-c", textwrap.dedent(code)], **kwargs)  # type: ignore[arg-type]


def gone(pid: int, timeout_s: float = 5.0) -> bool:
    """True once ``pid`` no longer exists (or is a zombie awaiting its new parent's reaping)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


def wait_for_line(lines: list[str], needle: str, timeout_s: float = 5.0) -> str:
    """The first captured line containing ``needle``; fails the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(lines):
            if needle in line:
                return line
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} not in {lines}")


def test_output_lines_are_prefixed_and_redacted(tmp_path: Path) -> None:
    """Output lines arrive as "name | line", signed query strings removed (kept in the raw log)."""
    lines: list[str] = []
    code = """
    import sys
    print("hello")
    print("oops", file=sys.stderr)
    print("got https://b.example/k.json?Expires=1&Signature=abc done")
    """
    with Stack(sink=lines.append, log_dir=tmp_path) as stack:
        stack.start(python("web", code))
        assert stack.wait("web", timeout_s=5) == 0
    assert lines == [
        "web      | hello",
        "web      | oops",
        "web      | got https://b.example/k.json done",
    ]
    assert "Signature=abc" in (tmp_path / "web.log").read_text()


def test_start_waits_for_the_probe(tmp_path: Path) -> None:
    """start returns only once the probe passes (here: the child created a file)."""
    flag = tmp_path / "ready"
    code = f"""
    import pathlib, time
    time.sleep(0.4)
    pathlib.Path({str(flag)!r}).touch()
    time.sleep(60)
    """
    with Stack(sink=lambda _: None) as stack:
        began = time.monotonic()
        stack.start(python("slow", code, probe=flag.exists))
        assert flag.exists()
        assert time.monotonic() - began >= 0.4


def test_start_many_launches_before_waiting(tmp_path: Path) -> None:
    """start_many launches every child before waiting, so one may become ready through another."""
    flag = tmp_path / "b-started"
    a = python("a", "import time; time.sleep(60)", probe=flag.exists, ready_timeout_s=10)
    b = python("b", f"import pathlib, time; pathlib.Path({str(flag)!r}).touch(); time.sleep(60)")
    with Stack(sink=lambda _: None) as stack:
        started = stack.start_many([a, b])
        assert [child.spec.name for child in started] == ["a", "b"]
        assert all(child.alive for child in started)


def test_child_exiting_before_ready_raises_with_its_output() -> None:
    """A child that exits before its probe passes raises StackError naming the code and tail."""
    code = "import sys; print('cannot bind'); sys.exit(3)"
    with Stack(sink=lambda _: None) as stack, pytest.raises(StackError) as caught:
        stack.start(python("web", code, probe=lambda: False))
    assert "exited with 3" in str(caught.value)
    assert "cannot bind" in str(caught.value)


def test_probe_timeout_raises_and_stops_the_child() -> None:
    """A probe that never passes raises StackError after the timeout, and the child is stopped."""
    with Stack(sink=lambda _: None) as stack:
        with pytest.raises(StackError, match=r"not ready after 0\.3 s"):
            spec = python("stuck", "import time; time.sleep(60)", probe=lambda: False)
            stack.start(dataclasses.replace(spec, ready_timeout_s=0.3))
        assert not stack["stuck"].alive


def test_stop_is_sigterm_first() -> None:
    """Stopping sends SIGTERM: a child that handles it exits on its own, cleanly."""
    lines: list[str] = []
    code = """
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: (print("bye", flush=True), sys.exit(0)))
    print("up", flush=True)
    time.sleep(60)
    """
    with Stack(sink=lines.append) as stack:
        stack.start(python("svc", code))
        wait_for_line(lines, "up")
        assert stack.stop("svc") == 0
    assert lines[-1].endswith("| bye")


def test_stop_escalates_to_sigkill_after_grace() -> None:
    """A child ignoring SIGTERM is killed with SIGKILL once the grace period is over."""
    lines: list[str] = []
    code = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("up", flush=True)
    time.sleep(60)
    """
    with Stack(sink=lines.append, grace_s=0.3) as stack:
        stack.start(python("deaf", code))
        wait_for_line(lines, "up")
        began = time.monotonic()
        assert stack.stop("deaf") == -signal.SIGKILL
        assert 0.3 <= time.monotonic() - began < 3


def test_stop_all_leaves_no_orphans() -> None:
    """Leaving the with block stops every child and every process they forked."""
    lines: list[str] = []
    with Stack(sink=lines.append) as stack:
        stack.start(python("a", FAMILY))
        stack.start(python("b", FAMILY))
        pids = [int(p) for name in "ab" for p in wait_for_line(lines, f"{name} ").split()[-2:]]
    assert all(gone(pid) for pid in pids)


def test_kill_and_restart() -> None:
    """kill SIGKILLs the child's whole group; restart runs the same spec again, new pid."""
    lines: list[str] = []
    with Stack(sink=lines.append) as stack:
        first = stack.start(python("worker", FAMILY))
        _, grandchild = (int(p) for p in first.wait_for("pids ").split()[-2:])
        assert stack.kill("worker") == -signal.SIGKILL
        assert not first.alive
        assert gone(grandchild)
        second = stack.restart("worker")
        assert second.alive
        assert second.pid != first.pid
        assert stack["worker"] is second


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)],
)
def test_parent_signal_stops_children(tmp_path: Path, signum: int, status: int) -> None:
    """SIGTERM or Ctrl-C (SIGINT) to the supervising process stops its whole family, then exits."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from asr_ingest.stack import ChildSpec, Stack
        with Stack() as stack:
            stack.start(ChildSpec("kid", [sys.executable, "-c", {FAMILY!r}]))
            time.sleep(60)
    """))  # fmt: skip
    parent = subprocess.Popen([PY, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    line = parent.stdout.readline()
    assert line.startswith("kid      | pids ")
    parent.send_signal(signum)
    assert parent.wait(10) == status
    assert all(gone(int(pid)) for pid in line.split()[-2:])


def test_redis_child_keeps_data_across_kill(tmp_path: Path) -> None:
    """The embedded Redis spec serves its URL and, with AOF, keeps data across SIGKILL."""
    with Stack(sink=lambda _: None) as stack:
        spec = redis_spec(tmp_path / "redis")
        stack.start(spec)
        client = redis.Redis.from_url(spec.url)
        client.set("k", "v")
        stack.kill("redis")
        stack.restart("redis")
        assert client.get("k") == b"v"
        client.close()


def test_moto_child_answers(tmp_path: Path) -> None:
    """The moto spec starts an S3 server that answers on its URL."""
    with Stack(sink=lambda _: None) as stack:
        child = stack.start(moto_spec(free_port()))
        assert child.spec.url.startswith("http://127.0.0.1:")
        assert child.alive


def test_sandbox_child_reports_its_settings() -> None:
    """The sandbox spec starts the stand-in; sandbox_env reads the settings it prints."""
    with Stack(sink=lambda _: None) as stack:
        child = stack.start(sandbox_spec(free_port(), "http://127.0.0.1:9/callbacks/eventbridge"))
        env = sandbox_env(child)
        assert env["DASHSCOPE_BASE_URL"] == child.spec.url + "/api/v1"
        assert env["DASHSCOPE_API_KEY"] == "sk-sandbox"
        assert env["RESULT_URL_REGEX"] and env["EVENTBRIDGE_CERT_URL_REGEX"]


def test_worker_ready_by_ping_and_restart(tmp_path: Path) -> None:
    """A real Celery worker counts as ready when it answers ping, and comes back after SIGKILL."""
    with Stack(sink=lambda _: None) as stack:
        url = stack.start(redis_spec(tmp_path / "redis")).spec.url
        spec = worker_spec({"REDIS_URL": url, "LOG_FORMAT": "json"}, concurrency=1)
        assert spec.env["CELERY_BROKER_URL"] == broker_url_for(url)
        stack.start(spec)
        assert spec.probe is not None and spec.probe()
        stack.kill("worker")
        assert not spec.probe()
        stack.restart("worker")
        assert spec.probe()


def test_wait_for_a_line_fails_when_the_child_exits() -> None:
    """wait_for returns a matching line, and raises StackError once the child is gone."""
    with Stack(sink=lambda _: None) as stack:
        child = stack.start(python("say", "print('listening on http://x'); print('bye')"))
        assert child.wait_for("listening") == "listening on http://x"
        stack.wait("say", timeout_s=5)
        with pytest.raises(StackError, match="no line with 'never'"):
            child.wait_for("never", timeout_s=5)


def test_broker_url_for_unix_socket() -> None:
    """A unix:// Redis URL becomes kombu's redis+socket:// spelling; others are unchanged."""
    assert broker_url_for("unix:///run/r.sock?db=2") == "redis+socket:///run/r.sock?virtual_host=2"
    assert broker_url_for("redis://h:6379/1") == "redis://h:6379/1"
