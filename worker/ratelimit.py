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

# KEYS[1] bucket hash; ARGV: rate (tokens/s), burst (tokens), ttl (s), longest wait (us).
# A token is reserved when one is available now or will be within the longest wait: the bucket
# goes into debt (tokens below zero), so the next caller's turn comes 1/rate later, and each
# caller sleeps only until its own turn. Returns the wait in microseconds (0: at once) when a
# token was reserved, else minus the wait until one would be (nothing is taken).
_RESERVE = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000000 + tonumber(now_t[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000000)
local wait = 0
if tokens < 1 then
  wait = math.ceil((1 - tokens) * 1000000 / rate)
end
if wait > tonumber(ARGV[4]) then
  return -wait
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return wait
"""


class RateLimiter:
    """``rate`` tokens per second with bursts of up to ``burst`` tokens, under Redis ``key``.

    Callers queue by reservation: :meth:`acquire` books the next free turn in one script call
    and sleeps until it, so waiting callers are served 1/``rate`` s apart, in booking order,
    with no polling.
    """

    def __init__(self, client: redis.Redis, key: str, rate: float, burst: float = 1.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.key = key
        self.bucket = key.removeprefix(KEY_PREFIX)
        self.rate = rate
        self.burst = burst
        self._reserve = client.register_script(_RESERVE)

    def reserve(self, max_wait_s: float) -> float:
        """Book a token due within ``max_wait_s`` seconds: its wait in seconds (0.0: now).

        Returns minus the wait when no token is due that soon (nothing is booked then).
        """
        ttl = max(60, int(self.burst / self.rate + max_wait_s) + 60)
        args = [self.rate, self.burst, ttl, int(max_wait_s * 1_000_000)]
        wait_us = int(self._reserve(keys=[self.key], args=args))
        if wait_us >= 0:
            metrics.token_granted(self.bucket)
        return wait_us / 1_000_000

    def try_acquire(self) -> float:
        """Take a token if one is available: 0.0, else the wait in seconds until one may be."""
        return abs(self.reserve(0.0))

    def acquire(self, timeout_s: float = 30.0) -> None:
        """Book a token and sleep until it is due; raises :class:`TransientError` at once when
        none is due within ``timeout_s`` seconds (nothing is booked then)."""
        started = time.monotonic()
        wait = self.reserve(timeout_s)
        if wait < 0:
            metrics.token_wait(self.bucket, 0.0, granted=False)
            raise TransientError(f"rate limit {self.key} busy", reason=Reason.RATE_LIMITED)
        if wait > 0:
            time.sleep(wait)
        metrics.token_wait(self.bucket, time.monotonic() - started, granted=True)


QUERY_BUCKET_KEY = KEY_PREFIX + "query"
SUBMIT_BUCKET_KEY = KEY_PREFIX + "submit:{family}"


def query_limiter(client: redis.Redis, qps: float) -> RateLimiter:
    """The account-wide task-query budget (``DASHSCOPE_QUERY_QPS``), shared by all processes."""
    return RateLimiter(client, QUERY_BUCKET_KEY, rate=qps, burst=max(1.0, qps))


SUBMIT_JITTER_S = 0.025
"""Slack per second of a submission limit for requests arriving unevenly (seconds).

DashScope (and the sandbox) count a family's submissions in a sliding one-second window.
Requests paced exactly 1/rps apart still reach it up to a few tens of milliseconds early or
late (thread wake-ups, the Redis calls before the request, the network), and one arriving
early would be the window's (rps+1)-th: a 429 that costs a turn. So each second's rps turns
are spread over 1 s + this slack (0.025 s: 2.4 % under the limit)."""


def submit_limiter(client: redis.Redis, family: str, rps: float) -> RateLimiter:
    """The submission budget of one model family (``SUBMIT_RATES``), shared by all processes:
    ``rps`` turns per 1 + :data:`SUBMIT_JITTER_S` seconds, one at a time."""
    rate = rps / (1.0 + SUBMIT_JITTER_S)
    return RateLimiter(client, SUBMIT_BUCKET_KEY.format(family=family), rate=rate, burst=1.0)
