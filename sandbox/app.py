"""HTTP routes of the stand-in (Flask), thin over :class:`~sandbox.service.SandboxService`.

=====================================================  ==========================================
``POST /api/v1/services/audio/asr/transcription``       submit (DashScope)
``GET /api/v1/tasks/<task_id>``                         query (DashScope)
``GET /api/v1/tasks?start_time&end_time&...``           list the account's tasks (DashScope)
``POST /api/v1/tasks/<task_id>/cancel``                 cancel a PENDING task (DashScope)
``GET /results/<task_id>/<n>.json?Expires&Signature``   result files (403 if expired or tampered)
``GET /x509_public_certificate_sandbox.pem``            EventBridge's signing certificate
``GET /_sandbox/state``                                 what the sandbox saw, for tests
``POST /_sandbox/account-error``                        ``{"kind", "seconds"}``: start or stop an
                                                        account-wide error (``kind`` null: stop)
``GET /livez``                                          200 while running
=====================================================  ==========================================

A submission whose answer is to be lost (``ambiguous_submit_fraction``) is either held for
``ambiguous_submit_delay_seconds`` before its normal answer, or its connection is closed with
no answer at all: the view marks the WSGI environ and :class:`_DropConnection` (around the
Flask app, where Flask cannot turn the drop into a 500) shuts the socket and raises
``ConnectionResetError``, which werkzeug's server treats as a dropped connection.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, abort, jsonify, request

from sandbox.config import AccountError
from sandbox.links import RESULTS_PREFIX
from sandbox.protocol import ApiError
from sandbox.service import SandboxService
from sandbox.signing import CERT_PATH

DROP_KEY = "sandbox.drop_connection"


def _headers() -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}


class _DropConnection:
    """WSGI middleware: close the client's socket, unanswered, when a view asked for it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        answer: Iterable[bytes] = self.app(environ, start_response)
        if not environ.get(DROP_KEY):
            return answer
        connection = environ.get("werkzeug.socket")
        if isinstance(connection, socket.socket):
            connection.shutdown(socket.SHUT_RDWR)
        raise ConnectionResetError("sandbox: submit answer lost on purpose")


_KINDS: dict[object, AccountError | None] = {
    "arrearage": "arrearage",
    "allocation-quota": "allocation-quota",
    None: None,
}


def _account_error(service: SandboxService) -> Any:
    body = request.get_json(force=True, silent=True)
    body = body if isinstance(body, dict) else {}
    kind, seconds = body.get("kind", "?"), body.get("seconds", 60.0)
    if (
        not isinstance(kind, str | None)
        or kind not in _KINDS
        or not isinstance(seconds, int | float)
    ):
        return {"error": "expected {kind: arrearage|allocation-quota|null, seconds}"}, 400
    service.set_account_error(_KINDS[kind], float(seconds))
    return {"account_error": kind, "seconds": seconds}


def create_app(service: SandboxService) -> Flask:
    """A Flask app serving ``service``'s DashScope, result, certificate and state routes."""
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # DefaultJSONProvider attribute
    app.wsgi_app = _DropConnection(app.wsgi_app)  # type: ignore[method-assign]  # middleware

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Any:
        return jsonify(service.error_body(exc)), exc.status

    _api_routes(app, service)
    _other_routes(app, service)
    return app


def _api_routes(app: Flask, service: SandboxService) -> None:
    """DashScope's task routes: submit, list, query, cancel."""

    @app.post("/api/v1/services/audio/asr/transcription")
    def submit() -> Any:
        answer = service.submit(_headers(), request.get_json(force=True, silent=True))
        if answer.lost == "drop":
            request.environ[DROP_KEY] = True
        elif answer.lost == "delay":
            service.hold(service.config.ambiguous_submit_delay_seconds)
        return answer.body

    @app.get("/api/v1/tasks")
    def list_tasks() -> Any:
        return service.list_tasks(_headers(), request.args.to_dict())

    @app.get("/api/v1/tasks/<task_id>")
    def query(task_id: str) -> Any:
        return service.query(_headers(), task_id)

    @app.post("/api/v1/tasks/<task_id>/cancel")
    def cancel(task_id: str) -> Any:
        return service.cancel(_headers(), task_id)


def _other_routes(app: Flask, service: SandboxService) -> None:
    """Result files, the signing certificate, the stand-in's own state and faults, liveness."""

    @app.get(RESULTS_PREFIX + "<task_id>/<name>")
    def result(task_id: str, name: str) -> Any:
        body = service.result(
            f"{RESULTS_PREFIX}{task_id}/{name}",
            request.args.get("Expires"),
            request.args.get("Signature"),
        )
        if body is None:
            abort(404)
        response = Response(body, mimetype="application/json")
        # OSS serves byte ranges; so does the stand-in (resumed downloads of large results).
        return response.make_conditional(request, accept_ranges=True, complete_length=len(body))

    @app.get(CERT_PATH)
    def certificate() -> Any:
        return Response(service.keys.certificate_pem, mimetype="application/x-pem-file")

    @app.get("/_sandbox/state")
    def state() -> Any:
        return service.state()

    @app.post("/_sandbox/account-error")
    def account_error() -> Any:
        return _account_error(service)

    @app.get("/livez")
    def livez() -> Any:
        return {"status": "pass"}
