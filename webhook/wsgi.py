"""Entry point for ``gunicorn webhook.wsgi:app``: builds the app at import."""

from __future__ import annotations

from webhook import create_app

app = create_app()
