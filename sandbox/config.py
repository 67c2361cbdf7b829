"""Behaviour knobs of the stand-in: timings, faults, limits and signing choices.

Every field has a default that mimics the real services closely enough for ``make run``; tests
shrink the timings. Times are in seconds (floats), sizes in bytes, fractions in ``[0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RetryStrategy = Literal["backoff", "exponential"]
AccountError = Literal["arrearage", "allocation-quota"]
AmbiguousMode = Literal["drop", "delay", "both"]

# Submission limits per model family in requests/s (seeds' comparison table, as in
# docs/dashscope-transcription.md "Limits"); qwen filetrans is not published: 10 is a guess.
DEFAULT_SUBMIT_RPS = {"fun-asr": 10.0, "paraformer": 20.0, "qwen3-asr-flash-filetrans": 10.0}


@dataclass(frozen=True)
class SandboxConfig:
    """How the stand-in behaves (``dataclasses.replace`` gives a modified copy).

    Delivery (EventBridge): ``callback_url`` is where ``AsyncTaskFinish`` events go (``None``:
    no callbacks) and the URL signed over; ``signature_version`` is ``"v2"`` (RSA-SHA256) or
    ``"v1"`` (HMAC-SHA1 with an RSA-wrapped secret), per docs/eventbridge-signature.md.
    ``sign_token_line`` and ``sign_trailing_newline`` choose among the documented string-to-sign
    forms. ``retry_strategy`` is the target's PushRetryStrategy (docs/eventbridge-signature.md,
    "What a receiver must do around it"): ``"exponential"`` (EXPONENTIAL_DECAY_RETRY) retries
    ``retry_base_seconds`` doubling up to ``retry_max_seconds``, at most ``retry_max_attempts``
    tries (the real service: 176 over a day); ``"backoff"`` (BACKOFF_RETRY, the console default)
    retries ``backoff_retry_count`` times, each after a random ``backoff_retry_min_seconds`` to
    ``backoff_retry_max_seconds`` (real: 3 times, 10-20 s), then drops the event.
    ``results_in_events`` (default true) puts the task output into ``data.output_result``; when
    false, events carry ``contain_result: false`` and no ``output_result`` (the generic Model
    Studio example). ``event_on_cancel`` also announces canceled tasks (not documented; off).
    ``foreign_events`` AsyncTaskFinish events of image and video tasks are pushed, one every
    ``foreign_event_interval_seconds`` after start, as the default EventBridge rule forwards.

    Faults: ``delivery_delay_seconds`` before the first delivery; ``duplicates`` extra copies of
    each event (each with its own event ``id``) spread over ``duplicate_spread_seconds``;
    ``drop_fraction`` of tasks get no callback; ``fail_fraction`` of subtasks fail with
    ``fail_code``; ``result_padding_bytes`` inflates every result file by that many bytes;
    ``suspend_fraction`` of tasks sit ``SUSPENDED`` for ``suspend_seconds`` before running.
    ``account_error`` (``"arrearage"``: 403 ``Arrearage``; ``"allocation-quota"``: 429
    ``Throttling.AllocationQuota``) answers every DashScope API call for the first
    ``account_error_seconds`` after start. ``ambiguous_submit_fraction`` of submissions create
    their task but lose the answer: ``ambiguous_submit_mode`` ``"drop"`` closes the connection
    without a response, ``"delay"`` answers after ``ambiguous_submit_delay_seconds`` (past a
    client's timeout), ``"both"`` picks one per request. ``error_msg_fraction`` of error bodies
    say ``msg`` instead of ``message`` (docs/dashscope-transcription.md: "some answers use
    ``msg``").

    Result files echo each media URL as ``file_url``. Whether the real service keeps a signed
    URL's query string there is not documented; the stand-in drops it unless
    ``echo_signed_file_url`` is set (the archiver removes it either way, since a signed URL is a
    credential).
    Fault choices are deterministic: per task id, file URL, submission number or error number
    (hash with ``seed``).

    Limits: ``query_qps`` per second for every ``/tasks`` call (query, list, cancel: one account
    budget; 429 ``Throttling`` beyond), ``submit_rps`` per model family for submissions (429
    ``Throttling.RateQuota``), ``max_files`` per task.
    """

    api_key: str = "sk-sandbox"
    callback_url: str | None = None
    signature_version: Literal["v1", "v2"] = "v2"
    signature_token: str | None = None
    sign_token_line: bool = True
    sign_trailing_newline: bool = True
    region: str = "cn-beijing"
    account_id: str = "1234567890123456"
    pending_seconds: float = 0.2
    min_running_seconds: float = 0.2
    delivery_delay_seconds: float = 0.0
    duplicates: int = 0
    duplicate_spread_seconds: float = 1.0
    drop_fraction: float = 0.0
    fail_fraction: float = 0.0
    fail_code: str = "InternalError.Sandbox"
    result_padding_bytes: int = 0
    echo_signed_file_url: bool = False
    retry_strategy: RetryStrategy = "exponential"
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 512.0
    retry_max_attempts: int = 176
    backoff_retry_count: int = 3
    backoff_retry_min_seconds: float = 10.0
    backoff_retry_max_seconds: float = 20.0
    results_in_events: bool = True
    event_on_cancel: bool = False
    foreign_events: int = 0
    foreign_event_interval_seconds: float = 1.0
    suspend_fraction: float = 0.0
    suspend_seconds: float = 1.0
    account_error: AccountError | None = None
    account_error_seconds: float = 60.0
    ambiguous_submit_fraction: float = 0.0
    ambiguous_submit_mode: AmbiguousMode = "both"
    ambiguous_submit_delay_seconds: float = 65.0
    error_msg_fraction: float = 0.0
    delivery_timeout_seconds: float = 10.0
    query_qps: float = 20.0
    submit_rps: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SUBMIT_RPS))
    max_files: int = 100
    result_url_ttl_seconds: int = 86_400
    download_workers: int = 16
    download_timeout_seconds: float = 30.0
    max_media_bytes: int = 2 * 1024**3
    use_ffprobe: bool = True
    seed: str = "sandbox"
