"""Run the stand-in: in this process on a thread (tests) or as a child process (end to end).

Both expose the same facts: ``url`` (``http://host:port``), ``api_url`` (``url + "/api/v1"``,
for ``DASHSCOPE_BASE_URL`` or ``dashscope.base_http_api_url``), ``cert_url``, and the regular
expressions that trust them (``RESULT_URL_REGEX``, ``EVENTBRIDGE_CERT_URL_REGEX``), ``env``
(those four variables with ``DASHSCOPE_API_KEY``, ready for a child's environment), plus
``state()``, the JSON record of submissions, queries, tasks and deliveries.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from sandbox.app import create_app
from sandbox.config import SandboxConfig
from sandbox.links import cert_url_regex, result_url_regex
from sandbox.service import SandboxService
from sandbox.signing import CERT_PATH, SigningKeys

READY_PREFIX = "sandbox listening on "


class _Handler(WSGIRequestHandler):
    """Keep-alive HTTP/1.1 (cheap for thousands of requests); quiet unless asked.

    Nagle is off: headers and body go out in separate writes, and with delayed ACKs each small
    answer would otherwise wait about 40 ms.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    quiet = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if not self.quiet:
            super().log_request(code, size)

    def handle(self) -> None:
        """Serve the connection; a client that resets an idle keep-alive connection is normal."""
        try:
            super().handle()
        except ConnectionResetError:
            return


class _LoudHandler(_Handler):
    quiet = False


class _Endpoints:
    url: str
    api_key: str

    @property
    def env(self) -> dict[str, str]:
        """Environment for a webhook and worker that should use and trust this sandbox."""
        return {
            "DASHSCOPE_BASE_URL": self.api_url,
            "DASHSCOPE_API_KEY": self.api_key,
            "RESULT_URL_REGEX": self.result_url_regex,
            "EVENTBRIDGE_CERT_URL_REGEX": self.cert_url_regex,
        }

    @property
    def api_url(self) -> str:
        """Base URL of the DashScope API (``.../api/v1``)."""
        return self.url + "/api/v1"

    @property
    def cert_url(self) -> str:
        """URL of the certificate that signs the callbacks."""
        return self.url + CERT_PATH

    @property
    def result_url_regex(self) -> str:
        """``RESULT_URL_REGEX`` accepting this sandbox's result links (use ``fullmatch``)."""
        return result_url_regex(self.url)

    @property
    def cert_url_regex(self) -> str:
        """``EVENTBRIDGE_CERT_URL_REGEX`` accepting this sandbox's certificate URL."""
        return cert_url_regex(self.url)


class Sandbox(_Endpoints):
    """A sandbox served by a threaded werkzeug server in this process.

    ``Sandbox(config).start()`` binds ``host:port`` (port 0: a free one) and serves in a daemon
    thread; ``stop()`` shuts it down. Usable as a context manager. ``keys`` (optional) reuses a
    key pair and certificate (tests share one to save the RSA key generation).
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_requests: bool = False,
        keys: SigningKeys | None = None,
    ) -> None:
        self.config = config or SandboxConfig()
        handler = _LoudHandler if log_requests else _Handler
        self._server: BaseWSGIServer = make_server(
            host, port, _not_ready, threaded=True, request_handler=handler
        )
        self.url = f"http://{host}:{self._server.server_port}"
        self.api_key = self.config.api_key
        self.service = SandboxService(self.config, self.url, keys)
        self._server.app = create_app(self.service)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="sandbox-http", daemon=True
        )

    def start(self) -> Sandbox:
        """Start serving; returns ``self``."""
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI)."""
        self._server.serve_forever()

    def state(self) -> dict[str, Any]:
        """Submissions, queries, tasks, deliveries and dropped task ids (plain JSON)."""
        return self.service.state()

    def stop(self) -> None:
        """Stop serving and release threads and sockets."""
        self._server.shutdown()
        self._server.server_close()
        self.service.close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _not_ready(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]


class SandboxProcess(_Endpoints):
    """A sandbox run as ``python -m sandbox ARGS`` (the ``asr-ingest sandbox`` command).

    ``args`` are CLI options (``["--callback-url", url, "--duplicates", "2"]``); ``log_path``
    receives the child's output. ``start()`` waits up to ``timeout`` seconds for the ready line
    and raises :class:`RuntimeError` if the child exits or does not announce itself.
    """

    def __init__(self, args: list[str], log_path: Path, host: str = "127.0.0.1") -> None:
        if "--api-key" not in args:  # never inherit DASHSCOPE_API_KEY from the environment
            args = [*args, "--api-key", "sk-sandbox"]
        self.args = ["--host", host, "--port", "0", *args]
        self.api_key = args[args.index("--api-key") + 1]
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> SandboxProcess:
        """Start the child and wait for its URL; returns ``self``."""
        with self.log_path.open("wb") as log:
            command = [sys.executable, "-m", "sandbox", *self.args]
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603  # own interpreter, fixed argv
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(READY_PREFIX + r"(\S+)", self.log_path.read_text(errors="replace"))
            if found:
                self.url = found.group(1)
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sandbox did not start; see {self.log_path}")

    def state(self) -> dict[str, Any]:
        """The child's ``GET /_sandbox/state``."""
        answer = httpx.get(self.url + "/_sandbox/state", timeout=10)
        answer.raise_for_status()
        state: dict[str, Any] = json.loads(answer.content)
        return state

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 5 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
