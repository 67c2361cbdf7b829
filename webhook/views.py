"""HTTP routes: the EventBridge callback, health checks and metrics.

The callback is a thin edge: verify the raw bytes → parse → store → enqueue → respond, then one
canonical log line and the metrics. Answers are the contract's (`docs/contract.md`, "HTTP
interface of the webhook"). Signature material and tokens are never logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from core.settings import Settings
from webhook.certificates import CertificateCache
from webhook.errors import WebhookError
from webhook.events import parse_event
from webhook.health import HEALTH_JSON, broker_answers, readiness, redis_answers
from webhook.intake import Intake
from webhook.metrics import WebhookMetrics
from webhook.signature import verify_delivery

EXTENSION = "asr_webhook"
log = structlog.get_logger("webhook.delivery")
bp = Blueprint("webhook", __name__)


@dataclass
class Webhook:
    """The collaborators of the views, built once per app by :func:`webhook.create_app`.

    ``clock`` returns seconds since the epoch (tests may replace it).
    """

    settings: Settings
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
def eventbridge_callback() -> tuple[Response, int]:
    """Verify, store and enqueue one EventBridge delivery; answer as the contract says."""
    hook, started = _hook(), time.perf_counter()
    fields: dict[str, str] = {}  # filled by _handle as it learns them; logged either way
    try:
        answer = _handle(hook, fields)
    except Exception:
        _record(hook, Answer(500, "error", "internal", {}), fields, started)
        raise
    _record(hook, answer, fields, started)
    return jsonify(answer.body), answer.status


def _handle(hook: Webhook, fields: dict[str, str]) -> Answer:
    try:
        body = _read_body(hook.settings.webhook_max_body_bytes)
    except RequestEntityTooLarge:
        return Answer(413, "rejected", "body_too_large", {"error": "body_too_large"})
    try:
        fields["signature"] = _verify(hook, body)
        event = parse_event(body)
        fields.update(event_id=event.event_id, task_id=event.task_id, model=event.model)
        if not event.is_task_finish:
            return Answer(200, "ignored", "", {"status": "ignored", "type": event.type})
        status = hook.intake.take(event, body)
        return Answer(200, status, "", {"status": status, "task_id": event.task_id})
    except WebhookError as exc:
        outcome = "rejected" if exc.status < 500 else "unavailable"
        return Answer(exc.status, outcome, exc.reason, {"error": exc.reason})


def _read_body(limit: int) -> bytes:
    """The raw body; raises RequestEntityTooLarge when it is over ``limit`` bytes.

    Werkzeug stops a chunked body (no Content-Length) silently at ``MAX_CONTENT_LENGTH``, so
    :func:`webhook.create_app` sets that to ``limit + 1`` and a body that reaches it is too large.
    """
    body = request.get_data(cache=False)
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def _verify(hook: Webhook, body: bytes) -> str:
    settings = hook.settings
    token = settings.eventbridge_signature_token
    return verify_delivery(
        request.headers,
        body,
        target_url=settings.webhook_public_url or _request_url(),
        keys=hook.keys,
        now_ms=int(hook.clock() * 1000),
        max_skew_ms=settings.eventbridge_max_skew_seconds * 1000,
        token=token.get_secret_value() if token is not None else None,
    )


def _request_url() -> str:
    """The URL as this process saw it; only right without a proxy (``WEBHOOK_PUBLIC_URL`` unset)."""
    query = request.query_string.decode("latin-1")
    return request.base_url + (f"?{query}" if query else "")


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
