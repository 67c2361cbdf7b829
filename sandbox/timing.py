"""Two small timing parts: a sliding-window rate limiter and a timer queue on one thread."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor


class WindowLimiter:
    """Allows at most ``rate`` events in any one-second window per key (thread-safe)."""

    def __init__(self) -> None:
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, rate: float, now: float | None = None) -> bool:
        """Record an event for ``key`` and return True, or return False when over ``rate``/s."""
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self._events.setdefault(key, deque())
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) >= rate:
                return False
            window.append(now)
            return True


class TimerQueue:
    """Runs callables at given delays (seconds) on ``executor``, ordered by due time.

    One daemon thread waits for the next due item; the work itself runs on the executor, so a
    slow callback never delays the others.
    """

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="sandbox-timers", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, func: Callable[[], None]) -> None:
        """Run ``func()`` on the executor after ``delay`` seconds (0 or less: at once)."""
        with self._wake:
            due = time.monotonic() + max(delay, 0.0)
            heapq.heappush(self._heap, (due, next(self._counter), func))
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wake.wait(timeout)
                if self._stopped:
                    return
                _, _, func = heapq.heappop(self._heap)
            try:
                self._executor.submit(func)
            except RuntimeError:  # executor shut down while stopping
                return

    def stop(self) -> None:
        """Stop dispatching; items not yet due are dropped."""
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=5)
