"""asr-ingest webhook: verifies, stores and enqueues EventBridge completion events.

:func:`create_app` is the Flask application factory; ``webhook/wsgi.py`` calls it for
gunicorn (``gunicorn webhook.wsgi:app``).
"""

from __future__ import annotations

import pydantic
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.broker import PUBLISH_TIMEOUT_SECONDS, publisher
from core.gauges import StateCollector
from core.logs import configure_logging
from core.redis_client import connect
from core.settings import Settings, load_settings, settings_error
from core.store import ReceiptStore
from webhook.certificates import CertificateCache, create_http_client
from webhook.intake import create_intake
from webhook.messages import broker_is_redis_store
from webhook.metrics import WebhookMetrics
from webhook.trust import trust_from
from webhook.views import EXTENSION, Webhook, bp

__all__ = ["create_app"]

REDIS_TIMEOUT_SECONDS = PUBLISH_TIMEOUT_SECONDS
"""Socket connect/read timeout for Redis: a dead server answers 503 quickly."""


def create_app(settings: Settings | None = None) -> Flask:
    """Build the webhook app for ``settings`` (default: read from the environment).

    Configures structlog; connects to nothing until the first request. Raises
    :class:`core.settings.SettingsError` (one line naming the variable) for an invalid setting,
    a missing ``WEBHOOK_PUBLIC_URL``, or no trusted certificate rule (:mod:`webhook.trust`).
    """
    if settings is None:
        try:
            settings = load_settings()
        except pydantic.ValidationError as exc:
            raise settings_error(exc) from None
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
    cache. See :mod:`webhook.intake` for the two intake paths. Raises
    :class:`core.settings.SettingsError` from :func:`webhook.trust.trust_from`."""
    trust = trust_from(settings)
    metrics = WebhookMetrics(settings.prometheus_multiproc_dir)
    client = connect(
        settings.redis_url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 1),
    )
    celery = publisher(settings)
    metrics.add_state(StateCollector(client, client if broker_is_redis_store(settings) else None))
    keys = CertificateCache(
        trust.cert_urls,
        create_http_client(),
        ttl_seconds=settings.eventbridge_cert_ttl_seconds,
        failure_ttl_seconds=settings.eventbridge_cert_failure_ttl_seconds,
        pins=trust.pins,
        on_new_key=metrics.key_seen,
    )
    return Webhook(
        settings=settings,
        trust=trust,
        keys=keys,
        intake=create_intake(settings, ReceiptStore(client, settings.dedupe_ttl_seconds), celery),
        redis=client,
        celery=celery,
        metrics=metrics,
    )
