"""The account circuit breaker: one shared pause of all submissions while DashScope refuses
the account.

`docs/dashscope-transcription.md` (errors): 403 ``Arrearage`` and 429
``Throttling.AllocationQuota`` are account-wide: every further call fails the same way until
billing changes, so submissions pause instead of failing file after file. (429
``Throttling.RateQuota`` is a rate, not a state: the client retries it with backoff.)

State lives in Redis, shared by every worker process::

    asr:breaker:account        hash {"code", "opened_at"}: present while the breaker is open
    asr:breaker:probe          the probe slot, TTL one probe interval: "waiting" after a
                               refusal, "probing" once a batch took it (SET NX)

- **open**: the first caller to see an account error opens it (one ``HSETNX``: only the call
  that changes the state logs ``dashscope_breaker_opened`` and counts the metric) and takes
  the probe slot for one interval, so the first probe comes one interval later.
- **while open** every batch is deferred (its files stay pending, never failed) until the
  slot expires, except the one batch per ``DASHSCOPE_BREAKER_PROBE_SECONDS`` that wins the
  slot: its next DashScope call is the probe. While a probe is in flight the others look
  again every :data:`PROBE_POLL_S`, so they follow a successful probe at once. A batch that
  passed the gate before the breaker opened looks once more right before its submit call.
  The probe is a *real* submit of a pending batch (or the list call of its resolution), not
  a query: ``Throttling.AllocationQuota`` is a quota of
  submissions, which a query would not see lifted, and a probe that succeeds is useful work
  instead of a wasted call. A failed probe is a definite refusal: it creates no task.
- **close**: any successful submit deletes the hash; the call that deleted it logs
  ``dashscope_breaker_closed``. Deferred batches wake on their own (their countdown) and go on.

Metrics (`docs/metrics.md`): ``asr_dashscope_breaker_transitions_total`` (counter, labels
``state`` = ``open``/``closed`` and ``code``, :mod:`worker.metrics`), counted by the call that
changed the state; ``asr_dashscope_breaker_open`` (gauge, 1 while the hash exists) is read from
Redis at scrape time (:mod:`core.gauges`), so every process reports the shared state, not the
last transition it happened to see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
import structlog

from core.gauges import BREAKER_KEY
from worker import metrics

log = structlog.get_logger(__name__)

STATE_KEY = BREAKER_KEY
PROBE_KEY = "asr:breaker:probe"
WAITING, PROBING = "waiting", "probing"
PROBE_POLL_S = 5.0
"""While a probe is in flight, waiting batches look again this often (s): its success frees
them at once instead of one interval later."""


@dataclass(frozen=True)
class Admission:
    """The breaker's answer: ``wait`` seconds (0.0: go now); ``probe`` when this call is it."""

    wait: float
    probe: bool


class AccountBreaker:
    """The shared breaker under Redis ``client``; a probe is allowed every ``probe_s`` seconds."""

    def __init__(self, client: redis.Redis, probe_s: float) -> None:
        self._redis = client
        self.probe_s = probe_s

    def open_code(self) -> str | None:
        """The DashScope code that opened the breaker, or None while it is closed."""
        raw = self._redis.hget(STATE_KEY, "code")
        return raw.decode() if isinstance(raw, bytes) else None

    def admit(self) -> Admission:
        """May a DashScope call go now? Closed: yes. Open: only for the caller that wins the
        probe slot (once per interval); the others get the seconds to wait."""
        if self.open_code() is None:
            return Admission(0.0, probe=False)
        if self._redis.set(PROBE_KEY, PROBING, nx=True, px=int(self.probe_s * 1000)):
            log.info("dashscope_breaker_probe")
            return Admission(0.0, probe=True)
        slot = self._redis.get(PROBE_KEY)
        wait = max(int(self._redis.pttl(PROBE_KEY)), 0) / 1000 or self.probe_s
        if slot == PROBING.encode():
            wait = min(wait, PROBE_POLL_S)  # a probe is in flight: look again soon
        return Admission(wait, probe=False)

    def trip(self, code: str) -> None:
        """Open the breaker for DashScope ``code`` (idempotent; logs once per opening)."""
        if self._redis.hsetnx(STATE_KEY, "code", code):
            self._redis.hset(STATE_KEY, "opened_at", repr(time.time()))
            self._redis.set(PROBE_KEY, WAITING, px=int(self.probe_s * 1000))
            log.warning("dashscope_breaker_opened", code=code, probe_every_s=self.probe_s)
            metrics.breaker_transition("open", code)
            return
        self._redis.set(PROBE_KEY, WAITING, px=int(self.probe_s * 1000))  # a failed probe

    def reset(self) -> None:
        """Close the breaker after a successful call (logs once per closing)."""
        code = self.open_code()
        if code is not None and self._redis.delete(STATE_KEY):
            log.info("dashscope_breaker_closed", code=code)
            metrics.breaker_transition("closed", code)
