"""The webhook's exception tree; every class carries a machine-readable ``reason``.

::

    WebhookError(PipelineError)      base (core.errors); never raised itself
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

from core.errors import PipelineError, Reason

SIGNATURE_REASONS = frozenset(
    {
        Reason.MISSING_SIGNATURE,
        Reason.BAD_TIMESTAMP,
        Reason.EXPIRED,
        Reason.UNTRUSTED_CERTIFICATE_URL,
        Reason.UNTRUSTED_CERTIFICATE,
        Reason.BAD_SIGNATURE,
        Reason.BAD_TOKEN,
    }
)
"""The 401 reasons of docs/contract.md ("HTTP interface of the webhook")."""


class WebhookError(PipelineError):
    """Base of every error the webhook raises on purpose; ``status`` is the HTTP answer."""

    status: int = 500

    def __init__(self, message: str = "", *, reason: Reason | None = None) -> None:
        super().__init__(message or str(reason or self.reason), reason=reason)


class SignatureError(WebhookError):
    """The delivery's signature headers are missing, stale, untrusted or wrong (401)."""

    status = 401

    def __init__(self, reason: Reason, detail: str = "") -> None:
        if reason not in SIGNATURE_REASONS:
            raise ValueError(f"{reason} is not a signature reason")
        reason = Reason(reason)
        super().__init__(f"{reason}: {detail}" if detail else reason, reason=reason)


class ForeignAccountError(WebhookError):
    """A verified event whose ``source`` is not ``acs.dashscope`` or whose ``aliyunaccountid``
    is not in ``EVENTBRIDGE_ACCOUNT_IDS`` (when set): any account can aim its rule at us (403)."""

    status = 403
    reason = Reason.FOREIGN_ACCOUNT


class BadRequestError(WebhookError):
    """The request body could not be read: bad chunk framing, a truncated body (400)."""

    status = 400
    reason = Reason.BAD_REQUEST


class EventError(WebhookError):
    """A verified body that is not a JSON object with a usable ``data.task_id`` (400)."""

    status = 400
    reason = Reason.BAD_EVENT


class UnavailableError(WebhookError):
    """A temporary failure: nothing was acknowledged, the sender should retry (503)."""

    status = 503
    reason = Reason.UNAVAILABLE


class CertificateUnavailable(UnavailableError):
    """The signing certificate could not be fetched or parsed."""

    reason = Reason.CERTIFICATE_UNAVAILABLE


class StoreUnavailable(UnavailableError):
    """Redis did not answer while claiming the receipt."""

    reason = Reason.REDIS_UNAVAILABLE


class BrokerUnavailable(UnavailableError):
    """The broker refused or timed out the archive message; the claim was released."""

    reason = Reason.BROKER_UNAVAILABLE
