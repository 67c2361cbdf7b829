"""Model-family classification and the shared Redis token bucket."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from core.errors import PermanentError
from core.models import family_of, model_from_api_key
from worker.ratelimit import RateLimiter


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

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 15 <= len(taken) <= 2 + 20 * 1.05 + 1


def test_acquire_times_out(redis_client: redis.Redis) -> None:
    """acquire gives up with a transient error when no token comes in time."""
    limiter = RateLimiter(redis_client, "test:slow", rate=0.1, burst=1)
    limiter.acquire()
    with pytest.raises(Exception, match="rate limit"):
        limiter.acquire(timeout_s=0.2)
