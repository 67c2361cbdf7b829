"""Read the account's task list (``GET /tasks``) page by page, inside the shared query budget.

Facts (`docs/dashscope-transcription.md`, "Listing tasks"): the window is ``start_time`` to
``end_time`` as ``YYYYMMDDhhmmss`` in China time (UTC+8), both inclusive to the second, at most
24 h, and selects tasks by submission time; ``page_no`` counts from 1, ``page_size`` is 1-100;
the answer is flat (``data``, ``total``, ``total_page``); each record has ``task_id``,
``status`` (the Java SDK's name; ``task_status`` in some answers: read ``status``, fall back to
``task_status``), ``model_name`` and ``user_api_unique_key``, and ``gmt_create``,
``start_time``, ``end_time`` in epoch milliseconds (null until set). The order of records is
not documented: callers deduplicate by ``task_id`` and keep ``end_time`` fixed for a whole
pass, so new submissions cannot shift the pages under it.

Every page costs one token of :func:`worker.ratelimit.query_limiter` (list, query and cancel
share the account's 20 QPS).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from core.errors import PermanentError
from core.models import family_of, model_from_api_key
from worker.dashscope import DashScopeClient
from worker.ratelimit import RateLimiter

CHINA = timezone(timedelta(hours=8))
MAX_WINDOW_S = 86_400
PAGE_SIZE = 100
BUDGET_WAIT_S = 2.0
"""Longest wait for a query-budget token before a pass gives up (TransientError)."""
MAX_PAGES = 1000
"""At most this many pages (100 000 tasks) per window, a guard against a list without end."""
FINISHED = frozenset({"SUCCEEDED", "FAILED", "CANCELED"})


def china_stamp(epoch_s: float) -> str:
    """``epoch_s`` (seconds) as the list's ``YYYYMMDDhhmmss`` in China time (UTC+8)."""
    return datetime.fromtimestamp(int(epoch_s), CHINA).strftime("%Y%m%d%H%M%S")


def china_time(epoch_s: float) -> str:
    """``epoch_s`` as an event's ``YYYY-MM-DD hh:mm:ss`` in China time (the events' format)."""
    return datetime.fromtimestamp(epoch_s, CHINA).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: object) -> float | None:
    """Epoch milliseconds (number) as seconds; None when absent or not a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value / 1000
    return None


@dataclass(frozen=True, slots=True)
class ListedTask:
    """One record of the list: ``submitted_at``/``ended_at`` in epoch seconds (None: unset)."""

    task_id: str
    model: str
    status: str
    submitted_at: float | None
    ended_at: float | None
    record: dict[str, Any]

    @property
    def finished(self) -> bool:
        """True for ``SUCCEEDED``, ``FAILED``, ``CANCELED`` (not PENDING/RUNNING/SUSPENDED)."""
        return self.status in FINISHED

    @property
    def transcription(self) -> bool:
        """True for a model of the three transcription families (``core.models``)."""
        try:
            family_of(self.model)
        except PermanentError:
            return False
        return True


def parse_record(record: dict[str, Any]) -> ListedTask | None:
    """The :class:`ListedTask` of one list record; None without a ``task_id``."""
    task_id = record.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        return None
    model = record.get("model_name") or model_from_api_key(
        str(record.get("user_api_unique_key") or "")
    )
    return ListedTask(
        task_id=task_id,
        model=str(model),
        status=str(record.get("status") or record.get("task_status") or "UNKNOWN"),
        submitted_at=_seconds(record.get("gmt_create")),
        ended_at=_seconds(record.get("end_time")),
        record=record,
    )


@dataclass
class TaskLister:
    """Pages through one window of the list with ``client``, one ``limiter`` token a page."""

    client: DashScopeClient
    limiter: RateLimiter
    pages: int = 0

    def window(
        self, start_s: float, end_s: float, model_name: str | None = None
    ) -> dict[str, ListedTask]:
        """Every task submitted in ``[start_s, end_s]`` (epoch seconds), by ``task_id``.

        The window is clipped to the last 24 h before ``end_s``. Raises
        :class:`core.errors.TransientError` when the budget has no token within
        :data:`BUDGET_WAIT_S` or a page fails after the client's retries (nothing is returned
        then: a partial pass must not be taken for a whole one), and
        :class:`worker.dashscope.DashScopeError` for a refused or malformed page.
        """
        start_s = max(start_s, end_s - MAX_WINDOW_S)
        found: dict[str, ListedTask] = {}
        for record in self._records(china_stamp(start_s), china_stamp(end_s), model_name):
            task = parse_record(record)
            if task is not None:
                found[task.task_id] = task
        return found

    def _records(self, start: str, end: str, model_name: str | None) -> Iterator[dict[str, Any]]:
        page_no = 1
        while True:
            self.limiter.acquire(timeout_s=BUDGET_WAIT_S)
            self.pages += 1
            answer = self.client.list_tasks(
                start, end, model_name=model_name, page_no=page_no, page_size=PAGE_SIZE
            )
            data = [r for r in answer.get("data") or [] if isinstance(r, dict)]
            yield from data
            total_pages = answer.get("total_page")
            if len(data) < PAGE_SIZE or page_no >= MAX_PAGES:
                return
            if isinstance(total_pages, int) and page_no >= total_pages:
                return
            page_no += 1
