"""Sign and post one announcement (Standard Webhooks, with the ``standardwebhooks`` library).

Headers ``webhook-id`` (stable per task), ``webhook-timestamp`` (seconds) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of id.timestamp.body>``) per the Standard
Webhooks specification, as `docs/contract.md` ("Notifications") requires.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from core.errors import PipelineError, Reason, TransientError, http_error

TIMEOUT_SECONDS = 10.0


class Notifier:
    """Posts announcements to ``url`` signed with ``secret`` (``whsec_`` + Base64)."""

    def __init__(self, url: str, secret: str, client: httpx.Client | None = None) -> None:
        self.url = url
        self._signer = Webhook(secret)
        self._client = client or httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False)

    def send(self, message_id: str, body: dict[str, Any], *, now: datetime | None = None) -> None:
        """Post ``body``; returns on a 2xx answer.

        Raises :class:`TransientError` (``notify_unavailable``) for no answer, 429 or 5xx and
        :class:`PermanentError` (``notify_rejected``) for any other status.
        """
        sent_at = now or datetime.now(UTC)
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._signer.sign(message_id, sent_at, data),
        }
        try:
            answer = self._client.post(self.url, content=data.encode(), headers=headers)
        except httpx.HTTPError as exc:
            raise TransientError(f"notify: {exc!r}", reason=Reason.NOTIFY_UNAVAILABLE) from exc
        if not answer.is_success:
            raise self._error(answer.status_code)

    @staticmethod
    def _error(status: int) -> PipelineError:
        return http_error(
            status,
            f"notify answered {status}",
            transient=Reason.NOTIFY_UNAVAILABLE,
            permanent=Reason.NOTIFY_REJECTED,
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()
