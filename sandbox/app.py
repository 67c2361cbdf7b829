"""HTTP routes of the stand-in (Flask), thin over :class:`~sandbox.service.SandboxService`.

=====================================================  ==========================================
``POST /api/v1/services/audio/asr/transcription``       submit (DashScope)
``GET /api/v1/tasks/<task_id>``                         query (DashScope)
``POST /api/v1/tasks/<task_id>/cancel``                 cancel a PENDING task (DashScope)
``GET /results/<task_id>/<n>.json?Expires&Signature``   result files (403 if expired or tampered)
``GET /x509_public_certificate_sandbox.pem``            EventBridge's signing certificate
``GET /_sandbox/state``                                 what the sandbox saw, for tests
``GET /livez``                                          200 while running
=====================================================  ==========================================
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import Flask, Response, abort, jsonify, request

from sandbox.links import RESULTS_PREFIX
from sandbox.protocol import ApiError
from sandbox.service import SandboxService
from sandbox.signing import CERT_PATH


def _headers() -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}


def _error(exc: ApiError) -> tuple[Response, int]:
    body = {"request_id": str(uuid.uuid4()), "code": exc.code, "message": exc.message}
    return jsonify(body), exc.status


def create_app(service: SandboxService) -> Flask:
    """A Flask app serving ``service``'s DashScope, result, certificate and state routes."""
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # DefaultJSONProvider attribute
    app.register_error_handler(ApiError, _error)

    @app.post("/api/v1/services/audio/asr/transcription")
    def submit() -> Any:
        return service.submit(_headers(), request.get_json(force=True, silent=True))

    @app.get("/api/v1/tasks/<task_id>")
    def query(task_id: str) -> Any:
        return service.query(_headers(), task_id)

    @app.post("/api/v1/tasks/<task_id>/cancel")
    def cancel(task_id: str) -> Any:
        return service.cancel(_headers(), task_id)

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

    @app.get("/livez")
    def livez() -> Any:
        return {"status": "pass"}

    return app
