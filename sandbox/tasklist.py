"""``GET /tasks``: the account's task list, filtered by time window, model and status, paged.

Request (query string; docs/dashscope-transcription.md, "Other task endpoints", and the
official SDK's ``list(start_time, end_time, model_name, api_key_id, region, status, page_no,
page_size)``): ``start_time``/``end_time`` as ``YYYYMMDDhhmmss`` in China time (UTC+8, like every
DashScope time), a window of at most 24 hours (default: the 24 hours before now; one bound
alone gives the other 24 hours away); ``model_name`` (exact), ``status`` (a task status),
``api_key_id``, ``region``; ``page_no`` from 1 and ``page_size`` 1-100 (default 1 and 10).
A task is in the window when its submission time is, both bounds inclusive to the second.

Answer: the body is flat, not under ``output`` (both official SDKs read it so: the Java SDK's
``AsyncTaskListResult`` takes ``data``, ``total``, ``total_page``, ``page_no``, ``page_size``
from the top level, and the Python SDK wraps the whole body as ``output``)::

    {"request_id": "...", "data": [<record>, ...], "total": 23, "total_page": 3,
     "page_no": 1, "page_size": 10}

Records follow the Java SDK's ``AsyncTaskInfo`` (times in epoch milliseconds) plus
``task_status`` (the name docs/dashscope-transcription.md uses; ``status`` is the SDK's).
Order: submission time, then task id, oldest first, so a fixed window pages stably.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sandbox.protocol import ApiError
from sandbox.state import CHINA

STATUSES = ("PENDING", "RUNNING", "SUSPENDED", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN")
MAX_WINDOW_SECONDS = 86_400
MAX_PAGE_SIZE = 100
_TIME_FORMAT = "%Y%m%d%H%M%S"


class Listed(Protocol):
    """What the list needs of a task (transcription or foreign)."""

    task_id: str
    model: str
    status: str
    submitted_at: float

    def record(self, region: str, account_id: str) -> dict[str, Any]:
        """The task's entry of ``data``."""


@dataclass(frozen=True)
class ListQuery:
    """A parsed list request: window ``[start, end]`` in epoch seconds, filters and page."""

    start: float
    end: float
    model_name: str | None = None
    status: str | None = None
    api_key_id: str | None = None
    region: str | None = None
    page_no: int = 1
    page_size: int = 10


def _invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidParameter", message)


def _time(name: str, text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        return dt.datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=CHINA).timestamp()
    except ValueError:
        raise _invalid(f"{name} must be YYYYMMDDhhmmss, got {text!r}") from None


def _int(name: str, text: str | None, default: int, low: int, high: int) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise _invalid(f"{name} must be an integer from {low} to {high}, got {text!r}")
    return int(text)


def _window(args: Mapping[str, str], now: float) -> tuple[float, float]:
    start, end = (
        _time("start_time", args.get("start_time")),
        _time("end_time", args.get("end_time")),
    )
    if start is None and end is None:
        end = float(int(now))
    if start is None:
        assert end is not None
        start = end - MAX_WINDOW_SECONDS
    if end is None:
        end = start + MAX_WINDOW_SECONDS
    if end < start:
        raise _invalid("end_time is before start_time")
    if end - start > MAX_WINDOW_SECONDS:
        raise _invalid("the time window between start_time and end_time exceeds 24 hours")
    return start, end


def parse_list_query(args: Mapping[str, str], now: float) -> ListQuery:
    """The :class:`ListQuery` of the query-string ``args``; :class:`ApiError` (400) if invalid.

    ``now`` (epoch seconds) places the default window.
    """
    start, end = _window(args, now)
    status = args.get("status") or None
    if status is not None and status not in STATUSES:
        raise _invalid(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    return ListQuery(
        start=start,
        end=end,
        model_name=args.get("model_name") or None,
        status=status,
        api_key_id=args.get("api_key_id") or None,
        region=args.get("region") or None,
        page_no=_int("page_no", args.get("page_no"), 1, 1, 1_000_000),
        page_size=_int("page_size", args.get("page_size"), 10, 1, MAX_PAGE_SIZE),
    )


def _matches(task: Listed, query: ListQuery, record: dict[str, Any]) -> bool:
    return (
        query.start <= task.submitted_at < query.end + 1
        and query.model_name in (None, task.model)
        and query.status in (None, task.status)
        and query.api_key_id in (None, record["api_key_id"])
        and query.region in (None, record["region"])
    )


def list_page(
    tasks: Iterable[Listed], query: ListQuery, *, region: str, account_id: str
) -> dict[str, Any]:
    """The list answer (without ``request_id``) for ``query`` over ``tasks``.

    A page past the last one is empty (``data: []``) with the true ``total``.
    """
    ordered = sorted(tasks, key=lambda task: (task.submitted_at, task.task_id))
    records = [(task, task.record(region, account_id)) for task in ordered]
    found = [record for task, record in records if _matches(task, query, record)]
    first = (query.page_no - 1) * query.page_size
    return {
        "data": found[first : first + query.page_size],
        "total": len(found),
        "total_page": math.ceil(len(found) / query.page_size),
        "page_no": query.page_no,
        "page_size": query.page_size,
    }
