"""HTTP routes: the EventBridge callback, health checks and metrics.

The callback is a thin edge: read → verify the raw bytes → parse → admit (tenant, type, model,
status) → store → enqueue → respond, then one canonical log line and the metrics. Answers are
the contract's (`docs/contract.md`, "HTTP interface of the webhook"). Signature material and
tokens are never logged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from core.settings import Settings
from webhook.admission import admit, parse_envelope
from webhook.certificates import CertificateCache
from webhook.errors import BadRequestError, WebhookError
from webhook.health import HEALTH_JSON, broker_answers, readiness, redis_answers
from webhook.intake import Intake
from webhook.metrics import WebhookMetrics
from webhook.signature import verify_delivery
from webhook.trust import Trust

EXTENSION = "asr_webhook"
log = structlog.get_logger("webhook.delivery")
bp = Blueprint("webhook", __name__)


@dataclass
class Webhook:
    """The collaborators of the views, built once per app by :func:`webhook.create_app`.

    ``clock`` returns seconds since the epoch (tests may replace it).
    """

    settings: Settings
    trust: Trust
    keys: CertificateCache
    intake: Intake
    redis: redis.Redis
    celery: Any
    metrics: WebhookMetrics
    clock: Callable[[], float] = time.time


@dataclass
class Answer:
    """One delivery's HTTP answer, with the outcome and reason for the log line and metrics."""

    status: int
    outcome: str
    reason: str
    body: dict[str, str]


def _hook() -> Webhook:
    hook: Webhook = current_app.extensions[EXTENSION]
    return hook


@bp.post("/callbacks/eventbridge")
def eventbridge_callback() -> Response:
    """Verify, store and enqueue one EventBridge delivery; answer as the contract says."""
    hook, started = _hook(), time.perf_counter()
    fields: dict[str, str] = {}  # filled by _handle as it learns them; logged either way
    try:
        answer = _handle(hook, fields)
    except Exception:
        _record(hook, Answer(500, "error", "internal", {}), fields, started)
        raise
    _record(hook, answer, fields, started)
    return _json(answer.body, answer.status)


def _json(document: dict[str, str], status: int) -> Response:
    """A compact JSON answer with its status (``jsonify`` costs about 25 us more per delivery:
    app context, sorting, indentation checks; a ``(response, status)`` tuple makes Flask set
    the status a second time; ``tests/benchmarks/webhook_bench.py --profile``)."""
    text = json.dumps(document, separators=(",", ":")) + "\n"
    return Response(text, status=status, mimetype="application/json")


def _handle(hook: Webhook, fields: dict[str, str]) -> Answer:
    try:
        body = _read_body(hook.settings.webhook_max_body_bytes)
        fields["signature"] = _verify(hook, body)
        event = parse_envelope(body)
        fields.update(event_id=event.event_id, task_id=event.task_id, model=event.model)
        ignored = admit(event, hook.trust)
        if ignored is not None:
            return Answer(200, "ignored", ignored, {"status": "ignored", "reason": ignored})
        status = hook.intake.take(event, body)
        return Answer(200, status, "", {"status": status, "task_id": event.task_id})
    except RequestEntityTooLarge:
        return Answer(413, "rejected", "body_too_large", {"error": "body_too_large"})
    except WebhookError as exc:
        outcome = "rejected" if exc.status < 500 else "unavailable"
        return Answer(exc.status, outcome, exc.reason, {"error": exc.reason})


def _read_body(limit: int) -> bytes:
    """The raw body; raises RequestEntityTooLarge when it is over ``limit`` bytes.

    Werkzeug stops a chunked body (no Content-Length) silently at ``MAX_CONTENT_LENGTH``, so
    :func:`webhook.create_app` sets that to ``limit + 1`` and a body that reaches it is too large.
    Raises :class:`BadRequestError` when the body cannot be read: the server's chunk decoder
    fails on a bad chunk size or a body cut short (gunicorn raises its own ``ParseException``
    types, werkzeug's server ``OSError``), which is client garbage, never a 5xx.
    """
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise
    except Exception as exc:  # any server's framing error while reading: the client's fault
        raise BadRequestError(f"body unreadable: {type(exc).__name__}") from exc
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def _verify(hook: Webhook, body: bytes) -> str:
    settings = hook.settings
    token = settings.eventbridge_signature_token
    return verify_delivery(
        _eventbridge_headers(request.environ),
        body,
        target_url=hook.trust.public_url,
        keys=hook.keys,
        now_ms=int(hook.clock() * 1000),
        max_skew_ms=settings.eventbridge_max_skew_seconds * 1000,
        token=token.get_secret_value() if token is not None else None,
    )


def _eventbridge_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request's ``x-eventbridge-*`` headers, names lower-cased, read straight from the WSGI
    environment (werkzeug's header view costs a key translation per header and lookup)."""
    return {
        key[5:].lower().replace("_", "-"): value
        for key, value in environ.items()
        if key.startswith(_EVENTBRIDGE_PREFIX)
    }


_EVENTBRIDGE_PREFIX = "HTTP_X_EVENTBRIDGE_"


def _record(hook: Webhook, answer: Answer, fields: dict[str, str], started: float) -> None:
    elapsed = time.perf_counter() - started
    hook.metrics.observe(answer.outcome, answer.reason, elapsed)
    log.info(
        "delivery",
        outcome=answer.outcome,
        reason=answer.reason,
        status=answer.status,
        task_id=fields.get("task_id", ""),
        event_id=fields.get("event_id", ""),
        model=fields.get("model", ""),
        signature=fields.get("signature", ""),
        latency_ms=round(elapsed * 1000, 2),
    )


@bp.get("/livez")
def livez() -> tuple[Response, int, dict[str, str]]:
    """200 while the process runs; checks nothing external."""
    return jsonify({"status": "pass"}), 200, {"Content-Type": HEALTH_JSON}


@bp.get("/readyz")
def readyz() -> tuple[Response, int, dict[str, str]]:
    """200 when Redis and the broker answer, else 503 (``application/health+json``)."""
    hook = _hook()
    checks = {"redis": redis_answers(hook.redis), "broker": broker_answers(hook.celery)}
    document, status = readiness(checks)
    return jsonify(document), status, {"Content-Type": HEALTH_JSON}


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition of the delivery metrics."""
    payload, content_type = _hook().metrics.exposition()
    return Response(payload, content_type=content_type)
