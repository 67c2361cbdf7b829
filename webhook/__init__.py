"""asr-ingest webhook: verifies, stores and enqueues EventBridge completion events.

:func:`create_app` is the Flask application factory; ``webhook/wsgi.py`` calls it for
gunicorn (``gunicorn webhook.wsgi:app``).
"""

from __future__ import annotations

import redis
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.broker import PUBLISH_TIMEOUT_SECONDS, publisher
from core.logs import configure_logging
from core.settings import Settings, load_settings
from core.store import ReceiptStore
from webhook.certificates import CertificateCache, create_http_client
from webhook.intake import create_intake
from webhook.metrics import WebhookMetrics
from webhook.views import EXTENSION, Webhook, bp

__all__ = ["create_app"]

REDIS_TIMEOUT_SECONDS = PUBLISH_TIMEOUT_SECONDS
"""Socket connect/read timeout for Redis: a dead server answers 503 quickly."""


def create_app(settings: Settings | None = None) -> Flask:
    """Build the webhook app for ``settings`` (default: read from the environment).

    Configures structlog; connects to nothing until the first request.
    """
    settings = settings or load_settings()
    configure_logging(settings.log_format)
    app = Flask(__name__)
    # One byte over the cap, so a chunked body that is too large is seen as such (views).
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook_max_body_bytes + 1
    app.extensions[EXTENSION] = build_webhook(settings)
    app.register_blueprint(bp)
    return app


def build_webhook(settings: Settings) -> Webhook:
    """The views' collaborators: Redis client, intake (receipt store and archive messages),
    publishing Celery app (:func:`core.broker.publisher`: fallback path, readiness), key
    cache. See :mod:`webhook.intake` for the two intake paths."""
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 1),
    )
    celery = publisher(settings)
    keys = CertificateCache(
        settings.cert_url_pattern,
        create_http_client(),
        ttl_seconds=settings.eventbridge_cert_ttl_seconds,
    )
    return Webhook(
        settings=settings,
        keys=keys,
        intake=create_intake(settings, ReceiptStore(client, settings.dedupe_ttl_seconds), celery),
        redis=client,
        celery=celery,
        metrics=WebhookMetrics(settings.prometheus_multiproc_dir),
    )
