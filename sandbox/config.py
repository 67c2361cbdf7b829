"""Behaviour knobs of the stand-in: timings, faults, limits and signing choices.

Every field has a default that mimics the real services closely enough for ``make run``; tests
shrink the timings. Times are in seconds (floats), sizes in bytes, fractions in ``[0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
    forms. Retries follow EventBridge's exponential decay policy: ``retry_base_seconds`` doubling
    up to ``retry_max_seconds``, at most ``retry_max_attempts`` tries (the real service retries
    for a day, 176 times).

    Faults: ``delivery_delay_seconds`` before the first delivery; ``duplicates`` extra copies of
    each event (each with its own event ``id``) spread over ``duplicate_spread_seconds``;
    ``drop_fraction`` of tasks get no callback; ``fail_fraction`` of subtasks fail with
    ``fail_code``; ``result_padding_bytes`` inflates every result file by that many bytes.

    Result files echo each media URL as ``file_url``. Whether the real service keeps a signed
    URL's query string there is not documented; the stand-in drops it unless
    ``echo_signed_file_url`` is set (the archiver removes it either way, since a signed URL is a
    credential).
    Fault choices are deterministic per task id or file URL (hash with ``seed``).

    Limits: ``query_qps`` per second for ``GET /tasks`` (429 ``Throttling`` beyond), ``submit_rps``
    per model family for submissions (429 ``Throttling.RateQuota``), ``max_files`` per task.
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
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 512.0
    retry_max_attempts: int = 176
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
