"""A token bucket kept in Redis, shared by every process that uses the same key.

Used for the DashScope query budget (``DASHSCOPE_QUERY_QPS``, account limit 20 QPS per
`docs/dashscope-transcription.md`, "Querying a task") and the per-model submission limits.
The refill clock is Redis's own ``TIME``, so processes on different machines agree.

Metrics (`docs/metrics.md`): ``asr_ratelimit_tokens_total{bucket}`` counts tokens granted and
``asr_ratelimit_wait_seconds{bucket, outcome}`` the time :meth:`RateLimiter.acquire` blocked;
``bucket`` is the key without its ``asr:ratelimit:`` prefix (``query``, ``submit:<family>``).
"""

from __future__ import annotations

import time

import redis

from core.errors import Reason, TransientError
from worker import metrics

KEY_PREFIX = "asr:ratelimit:"

# KEYS[1] bucket hash; ARGV: rate (tokens/s), burst (tokens), ttl (s).
# Returns 0 when a token was taken, else the wait in microseconds until one is available.
_TAKE = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000000 + tonumber(now_t[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return wait
"""


class RateLimiter:
    """``rate`` tokens per second with bursts of up to ``burst`` tokens, under Redis ``key``."""

    def __init__(self, client: redis.Redis, key: str, rate: float, burst: float = 1.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.key = key
        self.bucket = key.removeprefix(KEY_PREFIX)
        self.rate = rate
        self.burst = burst
        self._take = client.register_script(_TAKE)

    def try_acquire(self) -> float:
        """Take a token if one is available: 0.0, else the wait in seconds until one may be."""
        ttl = max(60, int(self.burst / self.rate) + 60)
        wait_us = int(self._take(keys=[self.key], args=[self.rate, self.burst, ttl]))
        if wait_us == 0:
            metrics.token_granted(self.bucket)
        return wait_us / 1_000_000

    def acquire(self, timeout_s: float = 30.0) -> None:
        """Block until a token is taken; raises :class:`TransientError` after ``timeout_s``."""
        started = time.monotonic()
        deadline = started + timeout_s
        while (wait := self.try_acquire()) > 0:
            if time.monotonic() + wait > deadline:
                metrics.token_wait(self.bucket, time.monotonic() - started, granted=False)
                raise TransientError(f"rate limit {self.key} busy", reason=Reason.RATE_LIMITED)
            time.sleep(wait)
        metrics.token_wait(self.bucket, time.monotonic() - started, granted=True)


QUERY_BUCKET_KEY = KEY_PREFIX + "query"
SUBMIT_BUCKET_KEY = KEY_PREFIX + "submit:{family}"


def query_limiter(client: redis.Redis, qps: float) -> RateLimiter:
    """The account-wide task-query budget (``DASHSCOPE_QUERY_QPS``), shared by all processes."""
    return RateLimiter(client, QUERY_BUCKET_KEY, rate=qps, burst=max(1.0, qps))


def submit_limiter(client: redis.Redis, family: str, rps: float) -> RateLimiter:
    """The submission budget of one model family (``SUBMIT_RATES``), shared by all processes."""
    return RateLimiter(client, SUBMIT_BUCKET_KEY.format(family=family), rate=rps, burst=1.0)
