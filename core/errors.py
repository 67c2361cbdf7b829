"""The one error vocabulary: typed reasons and the exception tree of the whole pipeline.

Every failure has a :class:`Reason`: the same value is the webhook's JSON ``error``, a
manifest's ``error.reason``, a dead letter's ``reason``, a log field and a metric label (short,
snake_case, low-cardinality). ``Reason`` is a :class:`~enum.StrEnum`, so a member compares
equal to, serialises as and formats as its string value.

::

    PipelineError                  base of every error raised on purpose; carries ``reason``
    ├── TransientError             worth retrying: network errors, timeouts, 429, 5xx, a lost lease
    │   └── ExpiredLinkError       403/404 from the result host: ask DashScope for a fresh link once
    ├── PermanentError             retrying cannot help: bad event, unknown model, oversized
    │                              result, a URL outside the allowed pattern, exhausted retries
    └── webhook.errors.WebhookError    an HTTP answer of the webhook (401, 400, 403, 503)

Third-party exceptions (httpx, botocore, oss2, redis, kombu, cryptography) are wrapped with
``raise ... from exc`` where they are caught, so callers and retry policies see only this
tree. :func:`http_error` is the one place that decides what an upstream HTTP status means.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why something failed or was refused (values are part of logs, manifests and answers)."""

    # webhook answers (docs/contract.md, "HTTP interface of the webhook")
    MISSING_SIGNATURE = "missing_signature"
    BAD_TIMESTAMP = "bad_timestamp"
    EXPIRED = "expired"
    UNTRUSTED_CERTIFICATE_URL = "untrusted_certificate_url"
    UNTRUSTED_CERTIFICATE = "untrusted_certificate"
    BAD_SIGNATURE = "bad_signature"
    BAD_TOKEN = "bad_token"  # noqa: S105  # a reason, not a password
    FOREIGN_ACCOUNT = "foreign_account"
    BAD_EVENT = "bad_event"
    BAD_REQUEST = "bad_request"
    OTHER_TYPE = "other_type"
    NOT_TRANSCRIPTION = "not_transcription"
    NOT_FINISHED = "not_finished"
    BODY_TOO_LARGE = "body_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    CERTIFICATE_UNAVAILABLE = "certificate_unavailable"
    REDIS_UNAVAILABLE = "redis_unavailable"
    BROKER_UNAVAILABLE = "broker_unavailable"
    UNAVAILABLE = "unavailable"
    # archiving
    NO_RECEIPT = "no_receipt"
    NO_RESULT = "no_result"
    UNKNOWN_MODEL = "unknown_model"
    TASK_NOT_FINISHED = "task_not_finished"
    URL_NOT_ALLOWED = "url_not_allowed"
    RESULT_TOO_LARGE = "result_too_large"
    RESULT_NOT_JSON = "result_not_json"
    RESULT_TIMEOUT = "result_timeout"
    RESULT_NETWORK = "result_network"
    RESULT_HTTP_429 = "result_http_429"
    RESULT_HTTP_5XX = "result_http_5xx"
    RESULT_HTTP_4XX = "result_http_4xx"
    EXPIRED_LINK = "expired_link"
    DESTINATION_UNAVAILABLE = "destination_unavailable"
    DESTINATION_REJECTED = "destination_rejected"
    DISK_FULL = "disk_full"
    BAD_DESTINATION = "bad_destination"
    LEASE_LOST = "lease_lost"
    POISON_LOOP = "poison_loop"
    INTERNAL_ERROR = "internal_error"
    # submission and DashScope
    MEDIA_UNAVAILABLE = "media_unavailable"
    MEDIA_REJECTED = "media_rejected"
    BAD_MEDIA_URL = "bad_media_url"
    UNREADABLE = "unreadable"
    RATE_LIMITED = "rate_limited"
    DASHSCOPE_THROTTLED = "dashscope_throttled"
    DASHSCOPE_UNAVAILABLE = "dashscope_unavailable"
    DASHSCOPE_REJECTED = "dashscope_rejected"
    DASHSCOPE_NETWORK = "dashscope_network"
    NO_API_KEY = "no_api_key"
    NOT_OURS = "not_ours"
    ALREADY_RESUBMITTED = "already_resubmitted"
    SUBMIT_UNCERTAIN = "submit_uncertain"  # a submit whose answer was lost: resolve, not retry
    ACCOUNT_BLOCKED = "account_blocked"  # Arrearage / Throttling.AllocationQuota: breaker opens
    BATCH_DEFERRED = "batch_deferred"  # a batch waits (breaker open, resolution, lock)
    # notifications
    NOTIFY_UNAVAILABLE = "notify_unavailable"
    NOTIFY_REJECTED = "notify_rejected"
    # generic fallbacks of the tree below
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    PIPELINE_ERROR = "pipeline_error"
    # archiving: fault handling (the retry horizon, task ids, leases)
    RESULT_EXPIRED = "result_expired"
    BAD_TASK_ID = "bad_task_id"
    LEASE_HELD = "lease_held"


class PipelineError(Exception):
    """Base of every error raised on purpose; ``reason`` says why (a :class:`Reason`)."""

    reason: Reason = Reason.PIPELINE_ERROR

    def __init__(self, message: str, *, reason: Reason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


PipelineError = PipelineError
"""The worker's name for :class:`PipelineError` (errors it raises and records)."""


class TransientError(PipelineError):
    """A failure that may pass: retry with backoff, then dead-letter."""

    reason = Reason.TRANSIENT


class ExpiredLinkError(TransientError):
    """The result host answered 403/404: the signed ``transcription_url`` has expired."""

    reason = Reason.EXPIRED_LINK


class PermanentError(PipelineError):
    """A failure that retrying cannot fix: record it and dead-letter at once."""

    reason = Reason.PERMANENT


def is_retryable_status(status: int) -> bool:
    """True for an upstream answer worth retrying: no answer (``status < 0``), 429 or 5xx."""
    return status < 0 or status == 429 or status >= 500


def http_error(status: int, message: str, *, transient: Reason, permanent: Reason) -> PipelineError:
    """The error for an upstream HTTP ``status`` (negative: no answer at all).

    429, 5xx and no answer are :class:`TransientError` with reason ``transient``; every other
    status is a :class:`PermanentError` with reason ``permanent``.
    """
    if is_retryable_status(status):
        return TransientError(message, reason=transient)
    return PermanentError(message, reason=permanent)
