"""The DashScope REST client against a small scripted HTTP server of the test's own."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from core.errors import PermanentError, TransientError
from core.settings import load_settings, load_settings_from
from sandbox.server import Sandbox
from tests.fixtures.sandbox import MediaServer
from worker.dashscope import (
    AccountBlockedError,
    AmbiguousSubmitError,
    DashScopeClient,
    DashScopeError,
    submit_body,
)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Script:
    """Answers to give, in order (status, JSON body); the last one repeats."""

    answers: list[tuple[int, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    delay_s: float = 0.0


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            script.requests.append(Recorded(self.command, self.path, dict(self.headers), body))
            if script.delay_s:
                threading.Event().wait(script.delay_s)
            index = min(len(script.requests), len(script.answers)) - 1
            status, answer = script.answers[index]
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up first (the timeout test)

        do_GET = _answer
        do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    """A scripted HTTP server on a free port; its base URL and script."""
    script = Script()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/api/v1", script
    httpd.shutdown()
    httpd.server_close()


def _client(base: str, **kwargs: Any) -> DashScopeClient:
    options: dict[str, Any] = {"backoff_s": 0.01, "backoff_max_s": 0.02, **kwargs}
    return DashScopeClient(base, "sk-test", **options)


ACCEPTED = {"request_id": "r1", "output": {"task_id": "t-1", "task_status": "PENDING"}}


def test_submit_fun_asr_sends_file_urls_and_headers(server: tuple[str, Script]) -> None:
    """A Fun-ASR submit posts file_urls, parameters, the async and auth headers; returns task_id."""
    base, script = server
    script.answers = [(200, ACCEPTED)]
    with _client(base, workspace="ws-1") as client:
        task_id = client.submit("fun-asr", ["https://m/a.wav", "https://m/b.wav"], {"x": 1})
    assert task_id == "t-1"
    sent = script.requests[0]
    assert (sent.method, sent.path) == ("POST", "/api/v1/services/audio/asr/transcription")
    assert sent.headers["Authorization"] == "Bearer sk-test"
    assert sent.headers["X-DashScope-Async"] == "enable"
    assert sent.headers["X-DashScope-WorkSpace"] == "ws-1"
    assert sent.body == {
        "model": "fun-asr",
        "input": {"file_urls": ["https://m/a.wav", "https://m/b.wav"]},
        "parameters": {"x": 1},
    }


def test_submit_qwen_sends_one_file_url_and_empty_parameters(server: tuple[str, Script]) -> None:
    """A Qwen filetrans submit posts one input.file_url string and parameters {}, no workspace."""
    base, script = server
    script.answers = [(200, ACCEPTED)]
    with _client(base) as client:
        client.submit("qwen3-asr-flash-filetrans", ["https://m/a.wav"])
    sent = script.requests[0]
    assert sent.body["input"] == {"file_url": "https://m/a.wav"}
    assert sent.body["parameters"] == {}
    assert "X-DashScope-WorkSpace" not in sent.headers


def test_submit_body_rejects_bad_batches() -> None:
    """Bodies the API would refuse (empty, > 100 URLs, 2 for Qwen, unknown model) are errors."""
    with pytest.raises(ValueError):
        submit_body("paraformer-v2", [], None)
    with pytest.raises(ValueError):
        submit_body("paraformer-v2", [f"https://m/{i}" for i in range(101)], None)
    with pytest.raises(ValueError):
        submit_body("qwen3-asr-flash-filetrans", ["https://m/a", "https://m/b"], None)
    with pytest.raises(PermanentError):
        submit_body("whisper", ["https://m/a"], None)


def test_429_then_success_is_retried(server: tuple[str, Script]) -> None:
    """Throttling (429) and a 503 are retried with backoff until the submit is accepted."""
    base, script = server
    throttled = {"request_id": "r", "code": "Throttling.RateQuota", "message": "slow down"}
    script.answers = [(429, throttled), (503, {"code": "x"}), (200, ACCEPTED)]
    with _client(base) as client:
        assert client.submit("paraformer-v2", ["https://m/a.wav"]) == "t-1"
    assert len(script.requests) == 3


def test_persistent_429_raises_transient_throttled(server: tuple[str, Script]) -> None:
    """Throttling that never stops ends, after max_attempts tries, in TransientError(throttled)."""
    base, script = server
    script.answers = [(429, {"code": "Throttling", "message": "slow"})]
    with _client(base, max_attempts=3) as client, pytest.raises(TransientError) as caught:
        client.query("t-1")
    assert caught.value.reason == "dashscope_throttled"
    assert len(script.requests) == 3


def test_4xx_is_permanent_with_code_and_message(server: tuple[str, Script]) -> None:
    """A 401 InvalidApiKey is not retried and carries status, code, message and request_id."""
    base, script = server
    script.answers = [(401, {"request_id": "r9", "code": "InvalidApiKey", "message": "bad key"})]
    with _client(base) as client, pytest.raises(DashScopeError) as caught:
        client.submit("fun-asr", ["https://m/a.wav"])
    error = caught.value
    assert (error.status, error.code, error.message, error.request_id) == (
        401,
        "InvalidApiKey",
        "bad key",
        "r9",
    )
    assert len(script.requests) == 1


def test_query_returns_full_json(server: tuple[str, Script]) -> None:
    """query GETs /tasks/<id> and returns the whole answer."""
    base, script = server
    answer = {"request_id": "r", "output": {"task_id": "t-7", "task_status": "RUNNING"}}
    script.answers = [(200, answer)]
    with _client(base) as client:
        assert client.query("t-7") == answer
    assert (script.requests[0].method, script.requests[0].path) == ("GET", "/api/v1/tasks/t-7")


def test_timeout_is_transient(server: tuple[str, Script]) -> None:
    """A server slower than the timeout ends in TransientError(dashscope_network)."""
    base, script = server
    script.answers = [(200, ACCEPTED)]
    script.delay_s = 0.5
    with _client(base, timeout_s=0.1, max_attempts=2) as client, pytest.raises(TransientError) as c:
        client.query("t-1")
    assert c.value.reason == "dashscope_network"


def test_malformed_answers_are_permanent(server: tuple[str, Script]) -> None:
    """A 200 that is not JSON, or a submit answer without output.task_id, is a DashScopeError."""
    base, script = server
    script.answers = [(200, b"<html>"), (200, {"output": {}})]
    with _client(base) as client:
        with pytest.raises(DashScopeError):
            client.query("t-1")
        with pytest.raises(DashScopeError):
            client.submit("fun-asr", ["https://m/a.wav"])


def test_from_settings_requires_api_key() -> None:
    """from_settings refuses to build a client without DASHSCOPE_API_KEY."""
    with pytest.raises(PermanentError) as caught:
        DashScopeClient.from_settings(load_settings(dashscope_api_key=None))
    assert caught.value.reason == "no_api_key"


def test_error_bodies_with_msg_instead_of_message(server: tuple[str, Script]) -> None:
    """An error answer carrying ``msg`` (not ``message``) still reports DashScope's text."""
    base, script = server
    script.answers = [(400, {"request_id": "r", "code": "InvalidParameter", "msg": "bad url"})]
    with _client(base) as client, pytest.raises(DashScopeError) as caught:
        client.submit("fun-asr", ["https://m/a.wav"])
    assert (caught.value.code, caught.value.message) == ("InvalidParameter", "bad url")


@pytest.mark.parametrize(
    ("status", "code"), [(403, "Arrearage"), (429, "Throttling.AllocationQuota")]
)
def test_account_wide_errors_are_not_retried(
    server: tuple[str, Script], status: int, code: str
) -> None:
    """Arrearage and AllocationQuota end the call at once with AccountBlockedError(code)."""
    base, script = server
    script.answers = [(status, {"request_id": "r", "code": code, "msg": "pay up"})]
    with _client(base) as client:
        with pytest.raises(AccountBlockedError) as caught:
            client.submit("fun-asr", ["https://m/a.wav"])
        with pytest.raises(AccountBlockedError):
            client.query("t-1")
    assert caught.value.code == code and caught.value.reason == "account_blocked"
    assert len(script.requests) == 2


def test_rate_quota_429_is_retried_not_a_breaker(server: tuple[str, Script]) -> None:
    """429 Throttling.RateQuota is a rate: retried with backoff, never AccountBlockedError."""
    base, script = server
    script.answers = [(429, {"code": "Throttling.RateQuota", "message": "slow"}), (200, ACCEPTED)]
    with _client(base) as client:
        assert client.submit("fun-asr", ["https://m/a.wav"]) == "t-1"
    assert len(script.requests) == 2


def test_each_submit_retry_is_paced_the_first_request_not(server: tuple[str, Script]) -> None:
    """``pace`` runs before every retry of a submit (after a 429), never before the first try."""
    base, script = server
    throttled = (429, {"code": "Throttling.RateQuota", "message": "slow"})
    script.answers = [throttled, throttled, (200, ACCEPTED)]
    paced: list[int] = []
    with _client(base) as client:
        pace = lambda: paced.append(len(script.requests))  # noqa: E731  # requests sent so far
        assert client.submit("fun-asr", ["https://m/a.wav"], pace=pace) == "t-1"
    assert paced == [1, 2]


def test_a_submit_without_answer_is_ambiguous_and_sent_once(server: tuple[str, Script]) -> None:
    """A submit that times out after sending is AmbiguousSubmitError after exactly one request."""
    base, script = server
    script.answers = [(200, ACCEPTED)]
    script.delay_s = 0.5
    with _client(base, timeout_s=0.1) as client, pytest.raises(AmbiguousSubmitError) as caught:
        client.submit("fun-asr", ["https://m/a.wav"])
    assert caught.value.reason == "submit_uncertain"
    assert len(script.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_submit_answered_by_a_gateway_error_is_ambiguous(
    server: tuple[str, Script], status: int
) -> None:
    """500/502/504 to a submit may hide a created task: ambiguous, not retried."""
    base, script = server
    script.answers = [(status, {"code": "InternalError"}), (200, ACCEPTED)]
    with _client(base) as client, pytest.raises(AmbiguousSubmitError):
        client.submit("fun-asr", ["https://m/a.wav"])
    assert len(script.requests) == 1


def test_a_dropped_connection_after_the_submit_is_ambiguous(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer
) -> None:
    """The sandbox creates the task and closes the connection: ambiguous, one submission."""
    box = make_sandbox(ambiguous_submit_fraction=1.0, ambiguous_submit_mode="drop")
    client = DashScopeClient(box.api_url, box.config.api_key)
    with client, pytest.raises(AmbiguousSubmitError) as caught:
        client.submit("fun-asr", [media_server.url_for("hello.wav")])
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
    assert len(box.state()["submissions"]) == 1 == len(box.state()["tasks"])


def test_a_submit_that_never_connected_is_retried() -> None:
    """Nothing listening: the request never left, so it is retried, then TransientError."""
    client = _client("http://127.0.0.1:9/api/v1", max_attempts=2)
    with client, pytest.raises(TransientError) as caught:
        client.submit("fun-asr", ["https://m/a.wav"])
    assert not isinstance(caught.value, AmbiguousSubmitError)
    assert caught.value.reason == "dashscope_network"


def test_list_tasks_sends_the_window_and_reads_the_flat_answer(server: tuple[str, Script]) -> None:
    """list_tasks GETs /tasks with window, model and page; the answer is returned flat."""
    base, script = server
    page = {"request_id": "r", "data": [{"task_id": "t", "status": "SUCCEEDED"}], "total": 1}
    script.answers = [(200, page), (200, {"request_id": "r", "data": {}})]
    with _client(base) as client:
        answer = client.list_tasks("20250101000000", "20250101235959", model_name="fun-asr")
        with pytest.raises(DashScopeError):
            client.list_tasks("20250101000000", "20250101235959")
    assert answer["data"][0]["task_id"] == "t"
    path = script.requests[0].path
    assert path.startswith("/api/v1/tasks?")
    assert "start_time=20250101000000" in path and "model_name=fun-asr" in path
    assert "page_no=1" in path and "page_size=100" in path


def test_a_workspace_endpoint_serves_submit_query_and_list(
    make_sandbox: Callable[..., Sandbox], media_server: MediaServer
) -> None:
    """Against https://{ws}.{region}.maas.aliyuncs.com/api/v1 every call finds its route."""
    box = make_sandbox()
    transport = httpx.WSGITransport(app=box._server.app)  # the sandbox's WSGI app, in-process
    base = "https://ws-1a2b3c.cn-beijing.maas.aliyuncs.com/api/v1"
    with DashScopeClient(base, box.config.api_key, workspace="ws-1a2b3c", transport=transport) as c:
        task_id = c.submit("paraformer-v2", [media_server.url_for("hello.wav")])
        assert c.query(task_id)["output"]["task_id"] == task_id
        listed = c.list_tasks("20000101000000", "20000101120000")
    assert listed["data"] == [] and listed["total"] == 0
    assert box.state()["tasks"][task_id]["model"] == "paraformer-v2"


def test_dashscope_http_base_url_is_an_alias() -> None:
    """DASHSCOPE_HTTP_BASE_URL (the SDK's name) sets the base URL; DASHSCOPE_BASE_URL wins."""
    sdk = {"DASHSCOPE_HTTP_BASE_URL": "https://dashscope-intl.aliyuncs.com/api/v1"}
    assert load_settings_from(sdk).dashscope_base_url == sdk["DASHSCOPE_HTTP_BASE_URL"]
    both = {**sdk, "DASHSCOPE_BASE_URL": "https://dashscope.aliyuncs.com/api/v1"}
    assert load_settings_from(both).dashscope_base_url == both["DASHSCOPE_BASE_URL"]
