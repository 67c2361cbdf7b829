"""Deterministic fault choices and the account-wide error window.

Every fault the sandbox injects is chosen by hashing ``seed`` with a key (a task id, a file
URL, the number of a submission or of an error answer), so a run with the same seed and the
same requests sees the same faults. Error codes and HTTP statuses follow
docs/dashscope-transcription.md ("Errors"): ``Arrearage`` is 403 and
``Throttling.AllocationQuota`` 429, both account-wide ("every further call fails the same
way"); some error bodies carry ``msg`` instead of ``message``.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from typing import Any, Literal

from sandbox.config import AccountError, SandboxConfig
from sandbox.protocol import ApiError

# kind → (HTTP status, code, message). The messages are the sandbox's; the real texts vary.
ACCOUNT_ERRORS: dict[str, tuple[int, str, str]] = {
    "arrearage": (
        403,
        "Arrearage",
        "Access denied, please make sure your account is in good standing.",
    ),
    "allocation-quota": (429, "Throttling.AllocationQuota", "Free allocated quota exceeded."),
}

LostAnswer = Literal["drop", "delay"]


def _fraction_of(seed: str, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def chosen(seed: str, key: str, fraction: float) -> bool:
    """Deterministically pick ``fraction`` of keys (hash of ``seed`` and ``key``)."""
    return _fraction_of(seed, key) < fraction


def uniform(seed: str, key: str, low: float, high: float) -> float:
    """A deterministic number in ``[low, high)`` for ``key`` (hash of ``seed`` and ``key``)."""
    return low + (high - low) * _fraction_of(seed, key)


def lost_answer(config: SandboxConfig, number: int) -> LostAnswer | None:
    """How the answer of submission ``number`` (0-based) is lost, or ``None`` if it is not.

    ``ambiguous_submit_fraction`` of submissions are chosen; ``ambiguous_submit_mode`` says
    ``"drop"`` (close the connection), ``"delay"`` (answer too late) or ``"both"`` (half each,
    chosen per submission).
    """
    if not chosen(config.seed + ":ambiguous", str(number), config.ambiguous_submit_fraction):
        return None
    if config.ambiguous_submit_mode != "both":
        return config.ambiguous_submit_mode
    return "drop" if chosen(config.seed + ":ambiguous-mode", str(number), 0.5) else "delay"


class AccountState:
    """The account-wide error window: while it lasts, every DashScope API call fails the same way.

    ``set(kind, seconds)`` opens it for ``seconds`` from now (``kind`` ``None`` closes it);
    :meth:`check` raises the matching :class:`ApiError` while it is open. Thread-safe.
    """

    def __init__(self, kind: AccountError | None = None, seconds: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._kind: AccountError | None = None
        self._until = 0.0
        self.set(kind, seconds)

    def set(self, kind: AccountError | None, seconds: float) -> None:
        """Fail every call with ``kind``'s error for ``seconds`` from now (``None``: stop)."""
        if kind is not None and kind not in ACCOUNT_ERRORS:
            raise ValueError(f"unknown account error {kind!r}; expected one of {ACCOUNT_ERRORS}")
        with self._lock:
            self._kind = kind
            self._until = time.monotonic() + seconds

    def active(self) -> AccountError | None:
        """The error kind in force now, or ``None``."""
        with self._lock:
            return self._kind if time.monotonic() < self._until else None

    def check(self) -> None:
        """Raise the account error (:class:`ApiError`) while the window is open."""
        kind = self.active()
        if kind is not None:
            raise ApiError(*ACCOUNT_ERRORS[kind])


class ErrorBodies:
    """Builds error answers, numbering them so ``error_msg_fraction`` of them say ``msg``."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def body(self, request_id: str, exc: ApiError) -> dict[str, Any]:
        """``{"request_id", "code", "message"}``, or with ``msg`` in place of ``message``."""
        with self._lock:
            number = next(self._numbers)
        key = (
            "msg"
            if chosen(self.config.seed + ":msg", str(number), self.config.error_msg_fraction)
            else "message"
        )
        return {"request_id": request_id, "code": exc.code, key: exc.message}
