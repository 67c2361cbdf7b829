"""Model-family classification and the shared Redis token bucket (turns booked in order)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import pytest
import redis

from core.errors import PermanentError, TransientError
from core.models import family_of, model_from_api_key
from worker.ratelimit import SUBMIT_JITTER_S, RateLimiter, submit_limiter


def run_together(work: Callable[[], None], count: int) -> None:
    """Run ``work`` on ``count`` threads at once and wait for all of them."""
    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("fun-asr", "fun-asr"),
        ("fun-asr-2025-11-07", "fun-asr"),
        ("fun-asr-mtl", "fun-asr"),
        ("paraformer-8k-v2", "paraformer"),
        ("qwen3-asr-flash-filetrans-2025-11-17", "qwen3-asr-flash-filetrans"),
    ],
)
def test_family_by_prefix(model: str, family: str) -> None:
    """Snapshots and variants classify by family prefix."""
    assert family_of(model) == family


@pytest.mark.parametrize("model", ["qwen3-asr-flash", "fun-asr-flash-2025", "whisper", "fun-asrx"])
def test_unknown_and_synchronous_models_rejected(model: str) -> None:
    """Synchronous and unknown models raise a permanent error naming the model."""
    with pytest.raises(PermanentError, match=model):
        family_of(model)


def test_model_from_api_key() -> None:
    """The model is the last ':' segment of user_api_unique_key."""
    assert model_from_api_key("apikey:v1:audio:asr:transcription:paraformer-8k-v1") == (
        "paraformer-8k-v1"
    )


def test_bucket_limits_rate_across_threads(redis_client: redis.Redis) -> None:
    """Four threads sharing one bucket at 20/s take no more than burst + rate*elapsed tokens."""
    taken: list[float] = []
    lock = threading.Lock()
    start = time.monotonic()

    def work() -> None:
        limiter = RateLimiter(redis_client, "test:bucket", rate=20, burst=2)
        while time.monotonic() - start < 1.0:
            if limiter.try_acquire() == 0:
                with lock:
                    taken.append(time.monotonic() - start)
            else:
                time.sleep(0.005)

    run_together(work, 4)
    assert 15 <= len(taken) <= 2 + 20 * 1.05 + 1


def test_acquire_times_out(redis_client: redis.Redis) -> None:
    """acquire gives up with a transient error when no token comes in time."""
    limiter = RateLimiter(redis_client, "test:slow", rate=0.1, burst=1)
    limiter.acquire()
    with pytest.raises(Exception, match="rate limit"):
        limiter.acquire(timeout_s=0.2)


def test_waiting_callers_are_served_one_turn_apart_without_polling(
    redis_client: redis.Redis,
) -> None:
    """Six callers waiting together get their tokens 1/rate s apart, one script call each."""
    RateLimiter(redis_client, "test:turns", rate=20, burst=1).acquire()  # the one token
    redis_client.config_resetstat()
    granted: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        RateLimiter(redis_client, "test:turns", rate=20, burst=1).acquire(timeout_s=5)
        with lock:
            granted.append(time.monotonic())

    started = time.monotonic()
    run_together(work, 6)
    granted.sort()
    assert all(b - a >= 0.04 for a, b in itertools.pairwise(granted))
    assert granted[-1] - started < 6 * 0.05 + 0.2  # served back to back, no turn lost
    assert redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] == 6


def test_a_turn_beyond_the_timeout_is_refused_at_once_and_not_booked(
    redis_client: redis.Redis,
) -> None:
    """acquire raises at once when the next turn is later than its timeout, booking nothing."""
    limiter = RateLimiter(redis_client, "test:refused", rate=2, burst=1)
    limiter.acquire()
    started = time.monotonic()
    with pytest.raises(TransientError, match="rate limit"):
        limiter.acquire(timeout_s=0.2)
    assert time.monotonic() - started < 0.1
    assert 0.3 < limiter.reserve(1.0) <= 0.5  # still the next turn: the refusal booked none


def test_submit_turns_leave_slack_for_uneven_arrival(redis_client: redis.Redis) -> None:
    """A family's turns are (1 + SUBMIT_JITTER_S) / rps apart: rps of them span more than 1 s."""
    pacer = submit_limiter(redis_client, "fun-asr", 10)
    waits = [pacer.turns.reserve(5.0) for _ in range(11)]
    assert waits[0] == 0
    assert waits[10] == pytest.approx(1.0 + SUBMIT_JITTER_S, abs=0.01)
    assert pacer.sends == 10 and pacer.window_s == pytest.approx(1.0 + SUBMIT_JITTER_S)


def test_the_send_window_holds_sends_back_when_turns_come_too_close(
    redis_client: redis.Redis,
) -> None:
    """With turns bunched (callers that woke late), the window lets only rps per 1.025 s go."""
    pacer = submit_limiter(redis_client, "paraformer", 5)
    pacer.turns = RateLimiter(redis_client, "test:bunched", rate=1000, burst=100)
    started = time.monotonic()
    sent = []
    for _ in range(11):
        pacer.acquire(timeout_s=5)
        sent.append(time.monotonic() - started)
    assert sent[4] < 0.1  # five at once: the window was empty
    for first, sixth in zip(sent, sent[5:], strict=False):
        assert sixth - first >= pacer.window_s - 0.03  # stamped in Redis, read here
    assert sent[10] < 2 * pacer.window_s + 0.2


def test_submit_pacers_in_threads_never_overfill_the_window(redis_client: redis.Redis) -> None:
    """Four threads sending at rps 10 stay within 10 sends per 1.025 s, at about that rate."""
    sent: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        pacer = submit_limiter(redis_client, "qwen3-asr-flash-filetrans", 10)
        for _ in range(6):
            pacer.acquire(timeout_s=10)
            with lock:
                sent.append(time.monotonic())

    run_together(work, 4)
    sent.sort()
    assert all(b - a >= 1.0 + SUBMIT_JITTER_S - 0.03 for a, b in zip(sent, sent[10:], strict=False))
    assert sent[-1] - sent[0] < 23 * 0.1025 + 0.3
