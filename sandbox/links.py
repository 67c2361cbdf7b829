"""Signed, expiring result links and the regular expressions that trust the sandbox's URLs.

A ``transcription_url`` looks like DashScope's (docs/dashscope-transcription.md, "The
transcription result file"): ``<base>/results/<task_id>/<n>.json?Expires=<epoch s>&
OSSAccessKeyId=<id>&Signature=<base64url HMAC-SHA256>``. The signature covers the path and the
expiry, so a changed path, expiry or signature, or a past expiry, is refused (403).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

RESULTS_PREFIX = "/results/"
ACCESS_KEY_ID = "LTAIsandbox"


class LinkSigner:
    """Makes and checks result links of one sandbox (``secret``: HMAC key bytes)."""

    def __init__(self, secret: bytes, base_url: str, ttl_seconds: int) -> None:
        self.secret = secret
        self.base_url = base_url.rstrip("/")
        self.ttl_seconds = ttl_seconds

    def _signature(self, path: str, expires: int) -> str:
        digest = hmac.new(self.secret, f"{path}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def url_for(self, path: str, now: float | None = None) -> str:
        """Signed URL of ``path`` (starting with ``/``), valid ``ttl_seconds`` from ``now``."""
        expires = int(now if now is not None else time.time()) + self.ttl_seconds
        signature = self._signature(path, expires)
        query = f"Expires={expires}&OSSAccessKeyId={ACCESS_KEY_ID}&Signature={signature}"
        return f"{self.base_url}{path}?{query}"

    def check(self, path: str, expires: str | None, signature: str | None) -> bool:
        """True when ``signature`` is valid for ``path`` and ``expires`` is in the future."""
        if not expires or not signature or not expires.isdigit():
            return False
        if int(expires) < time.time():
            return False
        return hmac.compare_digest(self._signature(path, int(expires)), signature)


def result_url_regex(base_url: str) -> str:
    """A ``RESULT_URL_REGEX`` (for ``fullmatch``) that accepts this sandbox's result links."""
    return re.escape(base_url.rstrip("/") + RESULTS_PREFIX) + r"[A-Za-z0-9._/-]+(\?[^#\s]*)?"


def cert_url_regex(base_url: str) -> str:
    """An ``EVENTBRIDGE_CERT_URL_REGEX`` (for ``fullmatch``) that accepts the sandbox's cert URL."""
    return re.escape(base_url.rstrip("/")) + r"/[A-Za-z0-9._-]+\.pem"
