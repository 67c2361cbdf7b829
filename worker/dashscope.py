"""A small DashScope REST client for file transcription: submit, query and list tasks.

Protocol facts come from `docs/dashscope-transcription.md`:

- submit: ``POST {base}/services/audio/asr/transcription`` with ``Authorization: Bearer``,
  ``X-DashScope-Async: enable`` (required) and optionally ``X-DashScope-WorkSpace``; body
  ``{"model", "input", "parameters"}`` where Fun-ASR and Paraformer take ``input.file_urls``
  (a list, at most 100) and Qwen3-ASR-Flash-Filetrans takes ``input.file_url`` (one string);
  ``parameters`` is always sent, even ``{}`` ("Submitting a task"). ``{base}`` is a region or a
  workspace endpoint (``https://{ws}.{region}.maas.aliyuncs.com/api/v1``): paths are relative.
- query: ``GET {base}/tasks/{task_id}`` ("Querying a task"); list: ``GET {base}/tasks`` with
  ``start_time``/``end_time`` (``YYYYMMDDhhmmss``, China time, at most 24 h apart),
  ``model_name``, ``status``, ``page_no``, ``page_size``; its answer is flat (``data``,
  ``total``, ``total_page`` at the top level: "Listing tasks"). Both share the account's
  20 QPS: callers pace them with :func:`worker.ratelimit.query_limiter`; submissions with
  :func:`worker.ratelimit.submit_limiter`. This client only retries.
- errors: JSON ``{"request_id", "code", "message"}`` (or ``msg``) with a non-200 status; 429
  ``Throttling.RateQuota`` and other throttling, 500, 502, 503, 504 and timeouts are retryable;
  403 ``Arrearage`` and 429 ``Throttling.AllocationQuota`` are account-wide and not retried
  here (:class:`AccountBlockedError`: the submitter's breaker pauses); other 4xx are permanent.
- a submit has no idempotency key ("A submit has no idempotency key"): a submit whose request
  may have reached DashScope but whose answer was lost (read or write timeout, the connection
  dropped, 500/502/504) is **not** retried: :class:`AmbiguousSubmitError`, which the submitter
  resolves from the task list. Only failures before the request left (connect errors, pool
  timeouts) and definite refusals (429, 503) are retried. A submit retry is a request like any
  other under the family's limit: :meth:`DashScopeClient.submit` calls its ``pace`` before each
  retry (the submitter takes a submission token there), so a 429 is not answered by unpaced
  requests into a window the limiter keeps full.

Errors raised: :class:`core.errors.TransientError` (reason ``dashscope_throttled``,
``dashscope_unavailable`` or ``dashscope_network``) once the bounded retries are spent,
:class:`AmbiguousSubmitError` and :class:`AccountBlockedError` (both transient) at once, and
:class:`DashScopeError` (a :class:`core.errors.PermanentError`) for other 4xx answers or an
answer that is not the documented JSON.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import httpx
import tenacity

from core.errors import PermanentError, Reason, TransientError, is_retryable_status
from core.models import is_single_file
from core.settings import Settings
from worker import metrics


class DashScopeError(PermanentError):
    """A 4xx answer other than 429 (bad key, bad parameter, ...) or a malformed answer.

    ``status`` is the HTTP status, ``code`` and ``message`` DashScope's error fields
    (``InvalidApiKey``, ``InvalidParameter``, ...; "" when absent).
    """

    reason = Reason.DASHSCOPE_REJECTED

    def __init__(self, status: int, code: str, message: str, request_id: str = "") -> None:
        super().__init__(f"DashScope answered {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


def submit_body(
    model: str, file_urls: list[str], parameters: dict[str, Any] | None
) -> dict[str, Any]:
    """The submit request body for ``model``'s family (see the module docstring).

    Raises :class:`PermanentError` (``unknown_model``) for an unknown model and ``ValueError``
    for an empty list, more than 100 URLs, or more than one URL for a single-file model.
    """
    if not file_urls or len(file_urls) > 100:
        raise ValueError(f"a task takes 1 to 100 file URLs, got {len(file_urls)}")
    if is_single_file(model):
        if len(file_urls) != 1:
            raise ValueError(f"{model} takes exactly one file per task")
        model_input: dict[str, Any] = {"file_url": file_urls[0]}
    else:
        model_input = {"file_urls": list(file_urls)}
    return {"model": model, "input": model_input, "parameters": dict(parameters or {})}


class AmbiguousSubmitError(TransientError):
    """A submit that may have created a task although no answer came back (see module)."""

    reason = Reason.SUBMIT_UNCERTAIN


class AccountBlockedError(TransientError):
    """403 ``Arrearage`` or 429 ``Throttling.AllocationQuota``: every call fails until billing
    changes (`docs/dashscope-transcription.md`, errors). ``code`` is DashScope's code."""

    reason = Reason.ACCOUNT_BLOCKED

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"DashScope account blocked: {code}: {message}")
        self.code = code


ACCOUNT_CODES = frozenset({"Arrearage", "Throttling.AllocationQuota"})
"""Error codes that block the whole account (`docs/dashscope-transcription.md`, errors)."""

# Statuses after which a POST may have been processed: the gateway lost the backend's answer.
_AMBIGUOUS_STATUSES = frozenset({500, 502, 504})
# Transport errors raised before any byte of the request left: the request cannot have arrived.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def _error_fields(response: httpx.Response) -> tuple[str, str, str]:
    """``(code, message, request_id)`` of an error answer; ``message`` falls back to ``msg``."""
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200], ""
    if not isinstance(body, dict):
        return "", str(body)[:200], ""
    message = body.get("message") or body.get("msg") or ""
    return str(body.get("code", "")), str(message), str(body.get("request_id", ""))


def _check(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a 200 answer; raise the tree's error for anything else."""
    status = response.status_code
    if status in (403, 429):
        code, message, _ = _error_fields(response)
        if code in ACCOUNT_CODES:
            raise AccountBlockedError(code, message)
    if is_retryable_status(status):
        code, message, _ = _error_fields(response)
        reason = Reason.DASHSCOPE_THROTTLED if status == 429 else Reason.DASHSCOPE_UNAVAILABLE
        raise TransientError(f"DashScope answered {status} {code}: {message}", reason=reason)
    if status != 200:
        raise DashScopeError(status, *_error_fields(response))
    try:
        body = response.json()
    except ValueError as exc:
        raise DashScopeError(status, "", "answer is not JSON") from exc
    if not isinstance(body, dict):
        raise DashScopeError(status, "", "answer is not a JSON object")
    return body


class DashScopeClient:
    """Submit and query DashScope transcription tasks over one pooled HTTP connection.

    ``base_url`` is the region endpoint (``DASHSCOPE_BASE_URL``, e.g.
    ``https://dashscope.aliyuncs.com/api/v1``); ``timeout_s`` applies to each request;
    transient failures are retried up to ``max_attempts`` times with exponential backoff
    and jitter starting at ``backoff_s`` seconds and capped at ``backoff_max_s``.
    ``transport`` replaces httpx's network transport (tests only).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        workspace: str | None = None,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 20.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"}
        if workspace:
            headers["X-DashScope-WorkSpace"] = workspace
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=timeout_s,
            transport=transport,
            follow_redirects=False,
        )
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_worth_retrying),
            stop=tenacity.stop_after_attempt(max_attempts),
            wait=tenacity.wait_exponential(multiplier=backoff_s, max=backoff_max_s)
            + tenacity.wait_random(0, backoff_s),
            reraise=True,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> DashScopeClient:
        """A client for ``DASHSCOPE_BASE_URL``, ``DASHSCOPE_API_KEY``, ``DASHSCOPE_WORKSPACE``
        and ``DASHSCOPE_TIMEOUT_SECONDS``.

        Raises :class:`PermanentError` (``no_api_key``) when no API key is configured.
        """
        if settings.dashscope_api_key is None:
            raise PermanentError("DASHSCOPE_API_KEY is not set", reason=Reason.NO_API_KEY)
        return cls(
            settings.dashscope_base_url,
            settings.dashscope_api_key.get_secret_value(),
            workspace=settings.dashscope_workspace,
            timeout_s=settings.dashscope_timeout_seconds,
        )

    def submit(
        self,
        model: str,
        file_urls: list[str],
        parameters: dict[str, Any] | None = None,
        pace: Callable[[], None] | None = None,
    ) -> str:
        """Submit one task for ``file_urls`` (signed HTTPS URLs); return its ``task_id``.

        ``pace`` (if given) is called before each retry, after the backoff: the caller's rate
        limiter. Raises ``ValueError`` for a body the API would refuse (see :func:`submit_body`),
        :class:`TransientError` after the retries, :class:`DashScopeError` otherwise.
        Raises :class:`AmbiguousSubmitError` at once when the task may exist although no
        answer came back, :class:`AccountBlockedError` for an account-wide refusal.
        """
        body = submit_body(model, file_urls, parameters)
        headers = {"X-DashScope-Async": "enable"}
        path = "services/audio/asr/transcription"
        answer = self._call("POST", path, pace=pace, json=body, headers=headers)
        output = answer.get("output")
        task_id = output.get("task_id") if isinstance(output, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise DashScopeError(200, "", "submit answer has no output.task_id")
        return task_id

    def query(self, task_id: str) -> dict[str, Any]:
        """The full JSON answer of ``GET /tasks/{task_id}`` (``output.task_status`` etc.).

        Raises :class:`TransientError` after the retries, :class:`DashScopeError` otherwise.
        """
        return self._call("GET", f"tasks/{task_id}")

    def list_tasks(
        self,
        start_time: str,
        end_time: str,
        *,
        model_name: str | None = None,
        page_no: int = 1,
        page_size: int = 100,
    ) -> dict[str, Any]:
        """One page of ``GET /tasks``: the flat answer ``{"data": [record...], "total", ...}``.

        ``start_time``/``end_time`` are ``YYYYMMDDhhmmss`` in China time (at most 24 h apart),
        ``page_no`` counts from 1, ``page_size`` is 1-100; ``model_name`` filters by exact
        name. Records carry ``task_id``, ``status`` (or ``task_status``), ``model_name``,
        ``gmt_create``/``start_time``/``end_time`` in epoch milliseconds
        (`docs/dashscope-transcription.md`, "Listing tasks"). Raises :class:`DashScopeError`
        when ``data`` is not a list, and as :meth:`query` does otherwise.
        """
        params: dict[str, str | int] = {
            "start_time": start_time,
            "end_time": end_time,
            "page_no": page_no,
            "page_size": page_size,
        }
        if model_name:
            params["model_name"] = model_name
        answer = self._call("GET", "tasks", params=params)
        if not isinstance(answer.get("data", []), list):
            raise DashScopeError(200, "", "list answer has no data list")
        return answer

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> DashScopeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(
        self, method: str, path: str, pace: Callable[[], None] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        attempts = itertools.count()

        def once() -> dict[str, Any]:
            if next(attempts) and pace is not None:
                pace()
            return self._once(method, path, **kwargs)

        result: dict[str, Any] = self._retrying(once)
        return result

    def _once(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            what = f"DashScope {method} {path}: {type(exc).__name__}"
            if method == "POST" and not isinstance(exc, _NOT_SENT):
                raise AmbiguousSubmitError(what) from exc
            raise TransientError(what, reason=Reason.DASHSCOPE_NETWORK) from exc
        if response.status_code == 429:
            metrics.dashscope_throttled(_operation(method, path), _error_fields(response)[0])
        if method == "POST" and response.status_code in _AMBIGUOUS_STATUSES:
            raise AmbiguousSubmitError(f"DashScope {method} {path} answered {response.status_code}")
        return _check(response)


def _operation(method: str, path: str) -> str:
    """The metric label of a call: ``submit``, ``list`` or ``query``."""
    if method == "POST":
        return "submit"
    return "list" if path == "tasks" else "query"


def _worth_retrying(exc: BaseException) -> bool:
    """Retry transient failures, but never a maybe-created task or an account-wide refusal."""
    if isinstance(exc, AmbiguousSubmitError | AccountBlockedError):
        return False
    return isinstance(exc, TransientError)
