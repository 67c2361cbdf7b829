"""A small DashScope REST client for file transcription: submit a task, query a task.

Protocol facts come from `docs/dashscope-transcription.md`:

- submit: ``POST {base}/services/audio/asr/transcription`` with ``Authorization: Bearer``,
  ``X-DashScope-Async: enable`` (required) and optionally ``X-DashScope-WorkSpace``; body
  ``{"model", "input", "parameters"}`` where Fun-ASR and Paraformer take ``input.file_urls``
  (a list, at most 100) and Qwen3-ASR-Flash-Filetrans takes ``input.file_url`` (one string);
  ``parameters`` is always sent, even ``{}`` ("Submitting a task").
- query: ``GET {base}/tasks/{task_id}`` ("Querying a task"), 20 QPS per account: callers pace
  it with :func:`worker.ratelimit.query_limiter`; submissions with
  :func:`worker.ratelimit.submit_limiter`. This client only retries.
- errors: JSON ``{"request_id", "code", "message"}`` with a non-200 status; 429 (``Throttling``),
  500, 502, 503, 504 and timeouts are retryable, other 4xx are permanent.

Errors raised: :class:`core.errors.TransientError` (reason ``dashscope_throttled``,
``dashscope_unavailable`` or ``dashscope_network``) once the bounded retries are spent, and
:class:`DashScopeError` (a :class:`core.errors.PermanentError`) for other 4xx answers or an
answer that is not the documented JSON.

A submit retried after a timeout may, in the rare case the first request did reach DashScope,
create a second task for the same files; the submitter's records keep only the task it was told.
"""

from __future__ import annotations

from typing import Any

import httpx
import tenacity

from core.errors import PermanentError, Reason, TransientError, is_retryable_status
from core.models import is_single_file
from core.settings import Settings


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


def _error_fields(response: httpx.Response) -> tuple[str, str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200], ""
    if not isinstance(body, dict):
        return "", str(body)[:200], ""
    return str(body.get("code", "")), str(body.get("message", "")), str(body.get("request_id", ""))


def _check(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a 200 answer; raise the tree's error for anything else."""
    status = response.status_code
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
            retry=tenacity.retry_if_exception_type(TransientError),
            stop=tenacity.stop_after_attempt(max_attempts),
            wait=tenacity.wait_exponential(multiplier=backoff_s, max=backoff_max_s)
            + tenacity.wait_random(0, backoff_s),
            reraise=True,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> DashScopeClient:
        """A client for ``DASHSCOPE_BASE_URL``, ``DASHSCOPE_API_KEY``, ``DASHSCOPE_WORKSPACE``.

        Raises :class:`PermanentError` (``no_api_key``) when no API key is configured.
        """
        if settings.dashscope_api_key is None:
            raise PermanentError("DASHSCOPE_API_KEY is not set", reason=Reason.NO_API_KEY)
        return cls(
            settings.dashscope_base_url,
            settings.dashscope_api_key.get_secret_value(),
            workspace=settings.dashscope_workspace,
        )

    def submit(
        self, model: str, file_urls: list[str], parameters: dict[str, Any] | None = None
    ) -> str:
        """Submit one task for ``file_urls`` (signed HTTPS URLs); return its ``task_id``.

        Raises ``ValueError`` for a body the API would refuse (see :func:`submit_body`),
        :class:`TransientError` after the retries, :class:`DashScopeError` otherwise.
        """
        body = submit_body(model, file_urls, parameters)
        headers = {"X-DashScope-Async": "enable"}
        answer = self._call("POST", "services/audio/asr/transcription", json=body, headers=headers)
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

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> DashScopeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._retrying(self._once, method, path, **kwargs)
        return result

    def _once(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TransientError(
                f"DashScope {method} {path}: {type(exc).__name__}", reason=Reason.DASHSCOPE_NETWORK
            ) from exc
        return _check(response)
