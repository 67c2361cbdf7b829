"""``asr-ingest sandbox`` as a child process, and its option parsing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path

import dashscope
import httpx
import pytest
from click.testing import CliRunner
from dashscope.audio.asr import Transcription

from asr_ingest.cli import main
from sandbox.cli import config_from_options
from sandbox.cli import sandbox as sandbox_command
from sandbox.server import SandboxProcess
from tests.fixtures.sandbox import CallbackReceiver, MediaServer, wait_for
from tests.sandbox.verifier import fetch_public_key, verify


def test_child_process_serves_sdk_and_pushes_events(
    make_sandbox_process: Callable[..., SandboxProcess],
    media_server: MediaServer,
    callback_receiver: CallbackReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command serves the SDK, pushes signed events as optioned, and exposes its state."""
    args = ["--callback-url", callback_receiver.url, "--duplicates", "1"]
    args += ["--duplicate-spread", "0.1", "--pending-seconds", "0", "--running-seconds", "0"]
    args += ["--signature-version", "v1", "--no-ffprobe"]
    child = make_sandbox_process(*args)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", child.url)
    assert child.env["DASHSCOPE_BASE_URL"] == child.api_url
    assert child.env["DASHSCOPE_API_KEY"] == "sk-sandbox"
    monkeypatch.setattr(dashscope, "base_http_api_url", child.api_url)
    submitted = Transcription.async_call(
        model="fun-asr", file_urls=[media_server.url_for("hello.wav")], api_key="sk-sandbox"
    )
    done = Transcription.wait(task=submitted, api_key="sk-sandbox")
    assert done.status_code == HTTPStatus.OK and done.output.task_status == "SUCCEEDED"
    wait_for(lambda: len(callback_receiver.requests) == 2)
    state = wait_for(lambda: len(child.state()["deliveries"]) == 2 and child.state())
    assert list(state["tasks"]) == [submitted.output.task_id]
    key = fetch_public_key(child.cert_url)
    headers, body = callback_receiver.requests[0]
    assert verify(callback_receiver.url, headers, body, key) == "plain+newline"
    child.stop()
    log = child.log_path.read_text()
    assert f"EVENTBRIDGE_CERT_URL_REGEX={child.cert_url_regex}" in log
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert {"task submitted", "task ended", "event pushed"} <= {e["event"] for e in events}
    assert "Signature=" not in log


def test_child_process_start_failure_is_reported(tmp_path: Path) -> None:
    """A child that exits at once (bad option) makes start() raise RuntimeError."""
    with pytest.raises(RuntimeError, match="did not start"):
        SandboxProcess(["--drop-fraction", "2"], tmp_path / "bad.log").start(timeout=20)


def test_help_lists_fault_options() -> None:
    """``asr-ingest sandbox --help`` documents the callback URL and the fault options."""
    result = CliRunner().invoke(main, ["sandbox", "--help"])
    assert result.exit_code == 0
    for option in ("--callback-url", "--duplicates", "--drop-fraction", "--fail-fraction"):
        assert option in result.output


@pytest.mark.parametrize(
    "args",
    [["--submit-rps", "fun-asr"], ["--submit-rps", "fun-asr=fast"], ["--fail-fraction", "-1"]],
)
def test_bad_options_exit_with_usage_error(args: list[str]) -> None:
    """Malformed --submit-rps values and out-of-range fractions are usage errors (exit 2)."""
    result = CliRunner().invoke(main, ["sandbox", "--port", "0", *args])
    assert result.exit_code == 2


def test_new_options_map_onto_config_fields() -> None:
    """Each fault and delivery option of the command lands in its SandboxConfig field."""
    args = ["--retry-strategy", "backoff", "--no-results-in-events", "--foreign-events", "4"]
    args += ["--account-error", "allocation-quota", "--account-error-seconds", "7"]
    args += ["--ambiguous-submit-fraction", "0.1", "--ambiguous-submit-mode", "delay"]
    args += ["--ambiguous-submit-delay", "3", "--error-msg-fraction", "0.2"]
    args += ["--suspend-fraction", "0.3", "--event-on-cancel"]
    context = sandbox_command.make_context("sandbox", args)
    config = config_from_options(context.params)
    assert config.retry_strategy == "backoff" and config.results_in_events is False
    assert (config.backoff_retry_min_seconds, config.backoff_retry_max_seconds) == (10.0, 20.0)
    assert config.foreign_events == 4
    assert (config.account_error, config.account_error_seconds) == ("allocation-quota", 7.0)
    assert config.ambiguous_submit_fraction == 0.1 and config.ambiguous_submit_mode == "delay"
    assert config.ambiguous_submit_delay_seconds == 3.0 and config.error_msg_fraction == 0.2
    assert config.suspend_fraction == 0.3 and config.event_on_cancel is True
    defaults = config_from_options(sandbox_command.make_context("sandbox", []).params)
    assert defaults.retry_strategy == "exponential" and defaults.results_in_events is True
    assert defaults.account_error is None and defaults.ambiguous_submit_delay_seconds == 65.0


def test_child_process_account_error_lost_answer_and_foreign_events(
    make_sandbox_process: Callable[..., SandboxProcess],
    media_server: MediaServer,
    callback_receiver: CallbackReceiver,
) -> None:
    """As a command: arrears for the first second, then a dropped answer, then events."""
    args = ["--callback-url", callback_receiver.url, "--no-ffprobe", "--no-results-in-events"]
    args += ["--account-error", "arrearage", "--account-error-seconds", "1"]
    args += ["--ambiguous-submit-fraction", "1", "--ambiguous-submit-mode", "drop"]
    args += ["--foreign-events", "1", "--foreign-interval", "0.05", "--retry-strategy", "backoff"]
    child = make_sandbox_process(*args)
    body = {"model": "fun-asr", "input": {"file_urls": [media_server.url_for("hello.wav")]}}
    submit_url = f"{child.api_url}/services/audio/asr/transcription"
    headers = {"Authorization": "Bearer sk-sandbox", "X-DashScope-Async": "enable"}
    arrears = httpx.post(submit_url, json=body, headers=headers)
    assert arrears.status_code == 403 and arrears.json()["code"] == "Arrearage"
    wait_for(lambda: child.state()["account_error"] is None)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(submit_url, json=body, headers=headers)
    wait_for(lambda: len(callback_receiver.requests) == 2)
    events = [json.loads(raw)["data"] for _, raw in callback_receiver.requests]
    keys = sorted(e["user_api_unique_key"].rsplit(":", 1)[-1] for e in events)
    assert keys == ["fun-asr", "wanx2.1-t2i-turbo"]
    ours = next(e for e in events if e["user_api_unique_key"].endswith(":fun-asr"))
    assert ours["contain_result"] is False and ours["task_id"] in child.state()["tasks"]
