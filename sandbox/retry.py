"""EventBridge's push retry policies (PushRetryStrategy of an HTTP target).

docs/eventbridge-signature.md ("What a receiver must do around it"): ``BACKOFF_RETRY`` (the
console default) retries 3 times, 10-20 s apart, then drops the event; ``EXPONENTIAL_DECAY_RETRY``
retries 176 times over about 24 h (1, 2, 4, ... 256 s, then 512 s). Only a 2xx answer stops
the retries.
"""

from __future__ import annotations

from sandbox.config import SandboxConfig
from sandbox.faults import uniform


def next_delay(config: SandboxConfig, event_id: str, attempt: int) -> float | None:
    """Seconds to wait before retrying after failed try number ``attempt`` (1-based).

    ``None`` means the policy gives up (the event is dropped). ``"backoff"``: at most
    ``backoff_retry_count`` retries, each after a deterministic pseudo-random delay in
    ``[backoff_retry_min_seconds, backoff_retry_max_seconds)`` (hash of ``seed``, event id and
    attempt). ``"exponential"``: ``retry_base_seconds * 2**(attempt - 1)`` capped at
    ``retry_max_seconds``, up to ``retry_max_attempts`` tries in all.
    """
    if config.retry_strategy == "backoff":
        if attempt > config.backoff_retry_count:
            return None
        low, high = config.backoff_retry_min_seconds, config.backoff_retry_max_seconds
        return uniform(config.seed + ":backoff", f"{event_id}:{attempt}", low, high)
    if attempt >= config.retry_max_attempts:
        return None
    return min(config.retry_base_seconds * 2.0 ** (attempt - 1), config.retry_max_seconds)
