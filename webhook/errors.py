"""The webhook's exception tree; every class carries a machine-readable ``reason``.

::

    WebhookError                     base; never raised itself
    ├── SignatureError(reason)       401: the delivery will never verify
    ├── ForeignAccountError          403 ``foreign_account``: verified, but not our tenant's
    ├── EventError                   400 ``bad_event``: verified, but not a usable event
    ├── BadRequestError              400 ``bad_request``: malformed HTTP framing or encoding
    └── UnavailableError             503: temporary, EventBridge retries
        ├── CertificateUnavailable   ``certificate_unavailable``: fetch or parse failed
        ├── StoreUnavailable         ``redis_unavailable``: the receipt could not be stored
        └── BrokerUnavailable        ``broker_unavailable``: the archive message was not published

Reasons of :class:`SignatureError` are the contract's (`docs/contract.md`, "HTTP interface"):
``missing_signature``, ``bad_timestamp``, ``expired``, ``untrusted_certificate_url``,
``untrusted_certificate``, ``bad_signature``, ``bad_token``. ``reason`` feeds the JSON answer,
logs and metric labels. Third-party exceptions (httpx, cryptography, redis, kombu) are wrapped
with ``raise ... from`` where they are caught.
"""

from __future__ import annotations

from typing import Literal

SignatureReason = Literal[
    "missing_signature",
    "bad_timestamp",
    "expired",
    "untrusted_certificate_url",
    "untrusted_certificate",
    "bad_signature",
    "bad_token",
]


class WebhookError(Exception):
    """Base of every error the webhook raises on purpose; ``status`` is the HTTP answer."""

    status: int = 500
    reason: str = "webhook_error"


class SignatureError(WebhookError):
    """The delivery's signature headers are missing, stale, untrusted or wrong (401)."""

    status = 401

    def __init__(self, reason: SignatureReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class ForeignAccountError(WebhookError):
    """A verified event whose ``source`` is not ``acs.dashscope`` or whose ``aliyunaccountid``
    is not in ``EVENTBRIDGE_ACCOUNT_IDS`` (when set): any account can aim its rule at us (403)."""

    status = 403
    reason = "foreign_account"


class BadRequestError(WebhookError):
    """The request body could not be read: bad chunk framing, a truncated body (400)."""

    status = 400
    reason = "bad_request"


class EventError(WebhookError):
    """A verified body that is not a JSON object with a usable ``data.task_id`` (400)."""

    status = 400
    reason = "bad_event"


class UnavailableError(WebhookError):
    """A temporary failure: nothing was acknowledged, the sender should retry (503)."""

    status = 503
    reason = "unavailable"


class CertificateUnavailable(UnavailableError):
    """The signing certificate could not be fetched or parsed."""

    reason = "certificate_unavailable"


class StoreUnavailable(UnavailableError):
    """Redis did not answer while claiming the receipt."""

    reason = "redis_unavailable"


class BrokerUnavailable(UnavailableError):
    """The broker refused or timed out the archive message; the claim was released."""

    reason = "broker_unavailable"
