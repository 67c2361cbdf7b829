"""gunicorn settings of the ``web`` process: gevent workers, and a deadline on reading requests.

The Procfile (run from the repository root) loads this file by its path,
``gunicorn webhook.wsgi:app -c webhook/gunicorn_conf.py --bind ... --workers ...``; the image
copies it to ``/etc/asr-ingest/gunicorn_conf.py`` (``deploy/Dockerfile``). By path, not as
``python:webhook.gunicorn_conf``: that would import the ``webhook`` package (redis-py, httpx,
Celery, cryptography) into gunicorn's master before the workers monkey-patch, which gevent
warns about (``redis.asyncio.connection`` keeps unpatched ``ssl`` names) and which leaves
pre-patch locks behind. Loaded by path, this module imports only gevent and structlog; each
worker patches first and then imports the app, as gunicorn intends.

Why (an outside tester's finding): a sync worker gives its process to one connection until the
request is read. Four clients that send their headers and then a body byte every 2 s held all
four workers of the old ``web`` process; deliveries and ``/livez`` went unanswered, and
``--timeout`` only replaced the killed worker with one that took the next slow client.

The decision:

* ``worker_class = "gevent"``: a connection waiting for bytes costs a greenlet (a few KiB),
  not a process, so slow clients do not starve deliveries. gunicorn monkey-patches the worker
  before it loads the app, so redis-py, httpx (certificate fetches), Celery's publisher and
  prometheus-client's multi-process files work unchanged (``tests/webhook/test_gunicorn.py``
  and ``tests/faults/`` run under it).
* ``worker_connections``: a bound per worker, so a flood queues in the listen backlog instead of
  exhausting memory: with the two deadlines below a slow client holds a slot for at most about
  15 s, and 4 workers x 250 slots hold 200 slow clients with room to spare.
* Reading the request line and headers is bounded by ``keepalive`` seconds in total: gunicorn's
  gevent worker parses every request inside ``gevent.Timeout(keepalive)``, and closes the
  connection when it fires. So ``keepalive`` must stay above 0.
* Reading the body is bounded by :class:`BodyDeadline`, installed around the app by
  :func:`post_worker_init`: it reads the whole body before the app runs, and answers
  ``408 {"error": "request_timeout"}`` and closes the connection when the body is not complete
  :data:`BODY_READ_DEADLINE_SECONDS` after the headers. gunicorn's ``timeout`` does not do this
  for async workers (it is only the worker's heartbeat), and a per-read socket timeout does not
  stop a client that sends a byte within each one.

A buffering proxy in front (``deploy/nginx/``, the Ingress in ``deploy/k8s/webhook.yaml``) is
the first line; this process holds on its own too, so running it bare (the Procfile) is safe.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import gevent
import structlog

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

BODY_READ_DEADLINE_SECONDS = 10.0
"""How long a request body may take to arrive in full, from the end of its headers (seconds).

An EventBridge delivery is about 1 KiB, sent at once; even the 1 MiB cap needs under 10 s at
1 Mbit/s. (nginx has no such total: its ``client_body_timeout`` bounds each read, see
``deploy/nginx/asr-ingest.conf``.)
"""
DEFAULT_MAX_BODY_BYTES = 1_048_576 + 1
"""Bytes of a chunked body to read when the app has no Flask ``MAX_CONTENT_LENGTH``."""
READ_CHUNK_BYTES = 65_536

worker_class = "gevent"
worker_connections = 250
keepalive = 5  # seconds: idle keep-alive and the whole request line + headers (see above)
timeout = 30  # seconds without a heartbeat before the arbiter replaces a worker (a stuck hub)
graceful_timeout = 20
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
control_socket_disable = True  # gunicorn >= 27's $HOME/.gunicorn/gunicorn.ctl: unused, and
# read-only in the image (deploy/k8s: readOnlyRootFilesystem), shared by every gunicorn on a host

log = structlog.get_logger("webhook.delivery")
_request: ContextVar[Any] = ContextVar("gunicorn_request", default=None)
"""gunicorn's request object being served by this greenlet (set by :func:`pre_request`)."""


class BodyDeadline:
    """WSGI middleware: read the whole request body within a deadline, then call the app.

    ``max_bytes`` caps what is read of a chunked body (the app rejects a longer one as too
    large); a declared ``Content-Length`` over it is left unread for the app to answer 413.
    The app then reads the body from memory. Needs gevent (``gevent.Timeout``).
    """

    def __init__(self, app: WSGIApplication, *, deadline_s: float, max_bytes: int) -> None:
        self.app = app
        self.deadline_s = deadline_s
        self.max_bytes = max_bytes

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        size = self._bytes_to_read(environ)
        if size == 0:
            return self.app(environ, start_response)
        started = time.perf_counter()
        try:
            body = read_within(environ["wsgi.input"], size, self.deadline_s)
        except Exception as exc:  # bad chunk framing: the app answers it (400 bad_request)
            environ["wsgi.input"] = Unreadable(exc)
            return self.app(environ, start_response)
        if body is None:
            return self._timed_out(environ, start_response, time.perf_counter() - started)
        environ["wsgi.input"] = io.BytesIO(body)
        return self.app(environ, start_response)

    def _bytes_to_read(self, environ: WSGIEnvironment) -> int:
        """Bytes to buffer: the Content-Length (0 when over the cap), or the cap when chunked."""
        length = environ.get("CONTENT_LENGTH") or ""
        if length.isdigit():
            return int(length) if int(length) <= self.max_bytes else 0
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        return self.max_bytes if chunked else 0

    def _timed_out(
        self, environ: WSGIEnvironment, start_response: StartResponse, seconds: float
    ) -> Iterable[bytes]:
        close_after_answer()
        log.info(
            "delivery",
            outcome="rejected",
            reason="request_timeout",
            status=408,
            path=environ.get("PATH_INFO", ""),
            latency_ms=round(seconds * 1000, 2),
        )
        body = b'{"error":"request_timeout"}\n'
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response("408 Request Timeout", headers)
        return [body]


class Unreadable(io.RawIOBase):
    """A request body whose reading failed: every read raises that same error again, so the
    app's own error handling answers it (with its log line and metrics)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise self.error


def read_within(stream: Any, size: int, deadline_s: float) -> bytes | None:
    """Up to ``size`` bytes of ``stream`` (fewer at its end); None when ``deadline_s`` passes."""
    chunks: list[bytes] = []
    remaining = size
    timeout = gevent.Timeout(deadline_s)
    timeout.start()
    try:
        while remaining > 0:
            chunk = stream.read(min(READ_CHUNK_BYTES, remaining))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except gevent.Timeout as exc:
        if exc is not timeout:
            raise
        return None
    finally:
        timeout.close()
    return b"".join(chunks)


def close_after_answer() -> None:
    """Make gunicorn close the connection after this answer instead of draining the body.

    gunicorn drops a ``Connection`` header set by the app (hop-by-hop) and keeps the
    connection unless its request object says otherwise; the rest of the body is never read.
    """
    request = _request.get()
    if request is not None:
        request.must_close = True


def pre_request(worker: Any, req: Any) -> None:
    """gunicorn hook, before each request: remember it for :func:`close_after_answer`."""
    worker.log.debug("%s %s", req.method, req.path)  # what gunicorn's default hook does
    _request.set(req)


def post_worker_init(worker: Any) -> None:
    """gunicorn hook, in each worker after the app is loaded: wrap it in :class:`BodyDeadline`."""
    config = getattr(worker.wsgi, "config", {})
    max_bytes = config.get("MAX_CONTENT_LENGTH") or DEFAULT_MAX_BODY_BYTES
    worker.wsgi = BodyDeadline(
        worker.wsgi, deadline_s=BODY_READ_DEADLINE_SECONDS, max_bytes=max_bytes
    )
