"""A local HTTP server that serves result files (and DashScope task answers) with faults.

It stands in for the OSS host of ``transcription_url`` links and for ``GET /tasks/{id}``.
Each path answers its body; a list of :class:`Fault` objects, consumed in order (one per
request), injects a status (5xx, 403, 429, a redirect), slowness, truncation or an oversized
``Content-Length``. ``hits(path)`` counts requests per path.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Fault:
    """One request's misbehaviour; fields combine.

    ``status``: answer this status (with ``location`` for a redirect) instead of the body;
    ``delay_s``: sleep this long before each 16 KiB chunk; ``truncate_at``: send this many
    bytes of the body and close, though ``Content-Length`` announces all of it;
    ``claim_bytes``: announce this ``Content-Length`` (an oversized body).
    """

    status: int | None = None
    location: str | None = None
    delay_s: float = 0.0
    truncate_at: int | None = None
    claim_bytes: int | None = None


@dataclass
class _Route:
    body: bytes
    faults: list[Fault]
    chunk_delay_s: float
    hits: int = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small answers must not wait for a delayed ACK

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        route, fault = self.server.take(path)
        if route is None:
            self._answer(404, b'{"code":"NotFound"}')
            return
        if fault.status is not None:
            self._answer(fault.status, b'{"code":"Injected"}', fault.location)
            return
        body = route.body
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(fault.claim_bytes or len(body)))
        self.end_headers()
        end = len(body) if fault.truncate_at is None else fault.truncate_at
        delay = fault.delay_s or route.chunk_delay_s
        try:
            for start in range(0, end, 16 * 1024):
                if delay:
                    time.sleep(delay)
                self.wfile.write(body[start : min(end, start + 16 * 1024)])
        except (BrokenPipeError, ConnectionResetError):
            pass
        if fault.truncate_at is not None or fault.claim_bytes:
            self.close_connection = True

    def _answer(self, status: int, body: bytes, location: str | None = None) -> None:
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up (timeouts under test); report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, _Route] = {}
        self.lock = threading.Lock()

    def take(self, path: str) -> tuple[_Route | None, Fault]:
        with self.lock:
            route = self.routes.get(path)
            if route is None:
                return None, Fault()
            route.hits += 1
            return route, route.faults.pop(0) if route.faults else Fault()


class ResultServer:
    """Serve bodies at ``url + path``; start on construction, :meth:`close` to stop."""

    def __init__(self) -> None:
        self._server = _Server()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self.url_regex = rf"http://127\.0\.0\.1:{port}/[^#\s]*"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def add(
        self,
        path: str,
        body: bytes,
        *,
        faults: list[Fault] | None = None,
        chunk_delay_s: float = 0.0,
        expires_in_s: float = 86_400.0,
    ) -> str:
        """Serve ``body`` at ``path``; return a signed-looking URL (with a query string) whose
        ``Expires`` is ``expires_in_s`` seconds from now (negative: already expired)."""
        with self._server.lock:
            self._server.routes[path] = _Route(body, list(faults or []), chunk_delay_s)
        expires = int(time.time() + expires_in_s)
        return f"{self.url}{path}?Expires={expires}&OSSAccessKeyId=LTAIfake&Signature=c2lnbmVk"

    def add_json(self, path: str, document: Any, **kwargs: Any) -> str:
        """Serve ``document`` as JSON at ``path`` (see :meth:`add`)."""
        return self.add(path, json.dumps(document).encode(), **kwargs)

    def hits(self, path: str) -> int:
        """How many requests ``path`` has had."""
        with self._server.lock:
            route = self._server.routes.get(path)
            return route.hits if route else 0

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
