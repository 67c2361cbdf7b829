"""The worker's time limits and the consistency check of the timing settings, run at start.

With the Redis broker, a message that is not acknowledged within the visibility timeout
(``BROKER_VISIBILITY_TIMEOUT_SECONDS``) is delivered again, to another worker, while the first
may still hold it (kombu's Redis transport). Late acknowledgement makes
that the rule for every running task and for every retry waiting for its countdown (a worker
holds a message with an ETA unacknowledged until it runs). So every interval a message can be
held must stay below it:

- the hard time limit (:func:`time_limits`, 90 % of it) kills a task before redelivery, and the
  soft limit (80 %) lets it clean up first;
- a task's archiving lease (``ARCHIVE_LEASE_SECONDS``) is renewed while it runs and must expire
  well before redelivery when its holder dies;
- retry and deferral countdowns (``ARCHIVE_RETRY_MAX_SECONDS``,
  ``DASHSCOPE_BREAKER_PROBE_SECONDS``) stay at most half of it: a longer wait is redelivered
  early and runs twice.

:func:`check_timeouts` refuses a combination that breaks one of these with a
:class:`core.settings.SettingsError`: one line naming the variables, as the webhook reports a
bad setting.
"""

from __future__ import annotations

from core.settings import Settings, SettingsError

SOFT_LIMIT_SHARE = 0.8
HARD_LIMIT_SHARE = 0.9


def time_limits(settings: Settings) -> tuple[int, int]:
    """``(soft, hard)`` task time limits, whole seconds: 80 % and 90 % of the visibility timeout."""
    visibility = settings.broker_visibility_timeout_seconds
    return int(visibility * SOFT_LIMIT_SHARE), int(visibility * HARD_LIMIT_SHARE)


def timing_problems(settings: Settings) -> list[str]:
    """Each inconsistency of the timing settings, one short sentence naming the variables."""
    vis = settings.broker_visibility_timeout_seconds
    soft, hard = time_limits(settings)
    name = f"BROKER_VISIBILITY_TIMEOUT_SECONDS ({vis} s)"
    problems = []
    if not 0 < soft <= hard < vis:
        problems.append(f"task time limits ({soft} s soft, {hard} s hard) must be below {name}")
    if settings.archive_lease_seconds >= vis:
        lease = settings.archive_lease_seconds
        problems.append(f"ARCHIVE_LEASE_SECONDS ({lease} s) must be below {name}")
    countdowns = {
        "ARCHIVE_RETRY_MAX_SECONDS": settings.archive_retry_max_seconds,
        "DASHSCOPE_BREAKER_PROBE_SECONDS": settings.dashscope_breaker_probe_seconds,
    }
    for variable, seconds in countdowns.items():
        if seconds > vis / 2:
            problems.append(f"{variable} ({seconds:g} s) must be at most half of {name}")
    return problems


def check_timeouts(settings: Settings) -> None:
    """Raise :class:`SettingsError` (one line, every problem) when the timing settings clash."""
    problems = timing_problems(settings)
    if problems:
        raise SettingsError("; ".join(problems))
