"""asr-ingest webhook: verifies, stores and enqueues EventBridge completion events.

:func:`create_app` is the Flask application factory; ``webhook/wsgi.py`` calls it for
gunicorn (``gunicorn webhook.wsgi:app``).
"""

from __future__ import annotations

import redis
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry

from webhook.certificates import CertificateCache, create_http_client
from webhook.intake import create_intake
from webhook.metrics import WebhookMetrics
from webhook.views import EXTENSION, Webhook, bp
from worker import AsrCelery, create_celery
from worker.logs import configure_logging
from worker.settings import Settings, load_settings
from worker.store import ReceiptStore

__all__ = ["create_app"]

REDIS_TIMEOUT_SECONDS = 2.0
"""Socket connect/read timeout for Redis and the broker: a dead server answers 503 quickly."""


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
    Celery app (publishing fallback, readiness), key cache. See :mod:`webhook.intake` for the
    two intake paths."""
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 1),
    )
    celery = publishing_celery(settings)
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


def publishing_celery(settings: Settings) -> AsrCelery:
    """The project's Celery app, tuned for publishing from a request: short broker timeouts.

    Used for every delivery only by the publishing intake (a broker other than ``REDIS_URL``);
    the one-round-trip intake uses it once, to build its message template.
    """
    celery = create_celery(settings)
    options = dict(celery.conf.broker_transport_options or {})
    options.update(
        socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
    )
    celery.conf.broker_transport_options = options
    celery.conf.broker_connection_timeout = REDIS_TIMEOUT_SECONDS
    # A "task-sent" event is a second broker publish per delivery (about a third of the publish
    # cost, measured by tests/benchmarks/webhook_bench.py --profile); the worker's own events
    # (received, started, succeeded) still reach Flower.
    celery.conf.task_send_sent_event = False
    return celery
