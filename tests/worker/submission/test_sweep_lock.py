"""The reconcile sweep lock: kept while a sweep runs, lapsing soon after its holder dies."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import redis

from worker.submission.reconcile import LOCK_KEY, SWEEP_LOCK_SECONDS, SweepReport, locked_sweep

HOLD_FOREVER = """
import sys, time, redis
from worker.submission.reconcile import locked_sweep

class Stuck:
    def sweep(self):
        print("sweeping", flush=True)
        time.sleep(600)

locked_sweep(redis.Redis.from_url(sys.argv[1]), Stuck())
"""


class Counting:
    """A reconciler stand-in whose sweep lasts ``seconds`` and counts its runs."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.runs = 0

    def sweep(self) -> SweepReport:
        self.runs += 1
        time.sleep(self.seconds)
        return SweepReport(queries=1)


def test_a_sweep_longer_than_the_lock_keeps_it(redis_client: redis.Redis) -> None:
    """Renewal: a 2.5 s sweep under a 1 s lock keeps other sweeps out to its end, then frees it."""
    slow, other = Counting(2.5), Counting(0)
    thread = threading.Thread(target=locked_sweep, args=(redis_client, slow, 1.0))
    thread.start()
    time.sleep(0.2)
    attempts = []
    while thread.is_alive():
        attempts.append(locked_sweep(redis_client, other, 1.0).queries)
        time.sleep(0.25)
    thread.join()
    assert slow.runs == 1 and other.runs == 0 and len(attempts) >= 8
    assert redis_client.get(LOCK_KEY) is None
    assert locked_sweep(redis_client, other).queries == 1


def test_a_killed_sweepers_lock_lapses_within_its_default_lifetime(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A worker SIGKILLed mid-sweep stops reconciliation for at most SWEEP_LOCK_SECONDS (30 s)."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_FOREVER, redis_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "sweeping\n"
        time.sleep(SWEEP_LOCK_SECONDS / 3 + 3)  # renewed once, 3 s ago (unrenewed: 17 s left)
        assert redis_client.pttl(LOCK_KEY) > (SWEEP_LOCK_SECONDS - 5) * 1000
    finally:
        child.kill()
        child.wait()
    killed, counting = time.monotonic(), Counting(0)
    while locked_sweep(redis_client, counting).queries == 0:
        assert time.monotonic() - killed < SWEEP_LOCK_SECONDS + 2, "the lock did not lapse"
        time.sleep(0.5)
    assert counting.runs == 1
