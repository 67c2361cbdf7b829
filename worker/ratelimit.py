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
Requests sent rps a second still reach it a few milliseconds early or late (the Redis calls
before the request, the network), and one arriving early would be the window's (rps+1)-th:
a 429 that costs a turn. So each rps sends are spread over at least 1 s + this slack
(0.025 s: 2.4 % under the limit)."""

# KEYS[1] list of recent send times (us, newest first); ARGV: sends, window (us), ttl (s).
# Stamps a send and returns 0 unless the window already holds that many sends; else the wait
# in microseconds until its oldest leaves it (nothing is stamped).
_CLAIM = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000000 + tonumber(now_t[2])
local sends = tonumber(ARGV[1])
local oldest = tonumber(redis.call('LINDEX', KEYS[1], sends - 1))
if oldest and now - oldest < tonumber(ARGV[2]) then
  return oldest + tonumber(ARGV[2]) - now
end
redis.call('LPUSH', KEYS[1], now)
redis.call('LTRIM', KEYS[1], 0, sends - 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 0
"""


class SubmitPacer:
    """The submission limit of one model family, shared by every process through Redis.

    Two steps per send. A turn is booked in ``turns`` (a :class:`RateLimiter` at
    rps / (1 + :data:`SUBMIT_JITTER_S`)), so waiting callers wake one at a time. Then, awake,
    the caller stamps its send in a sliding window like DashScope's own: at most
    ``sends`` = max(1, floor(rps)) stamps in any ``sends`` / rps * (1 + slack) seconds, counted
    from when callers really went, not when they were booked. A caller that woke late (a
    busy CPU) therefore cannot put the next, punctual one inside the window's limit, and
    the next one is not held back for the late one either.
    """

    def __init__(self, client: redis.Redis, family: str, rps: float) -> None:
        if rps <= 0:
            raise ValueError("rps must be > 0")
        rate = rps / (1.0 + SUBMIT_JITTER_S)
        self.turns = RateLimiter(client, SUBMIT_BUCKET_KEY.format(family=family), rate=rate)
        self.sends = max(1, int(rps))
        self.window_s = self.sends / rate
        self._key = SUBMIT_BUCKET_KEY.format(family=family) + ":sent"
        self._claim = client.register_script(_CLAIM)

    def acquire(self, timeout_s: float = 30.0) -> None:
        """Wait for a turn and a free place in the window, then count this send.

        Raises :class:`TransientError` when the turn is not due within ``timeout_s`` seconds
        (at once, nothing booked) or the window stays full past it.
        """
        deadline = time.monotonic() + timeout_s
        self.turns.acquire(timeout_s)
        while (wait := self._stamp()) > 0:
            if time.monotonic() + wait > deadline:
                raise TransientError(f"rate limit {self._key} busy", reason=Reason.RATE_LIMITED)
            time.sleep(wait)

    def _stamp(self) -> float:
        ttl = int(self.window_s) + 60
        args = [self.sends, int(self.window_s * 1_000_000), ttl]
        return int(self._claim(keys=[self._key], args=args)) / 1_000_000


def submit_limiter(client: redis.Redis, family: str, rps: float) -> SubmitPacer:
    """The submission limit of one model family (``SUBMIT_RATES``), shared by all processes
    (see :class:`SubmitPacer`)."""
    return SubmitPacer(client, family, rps)
