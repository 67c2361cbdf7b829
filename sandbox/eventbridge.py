"""EventBridge's side: build ``AsyncTaskFinish`` events and push them, signed, with retries.

The event is the complete CloudEvents envelope of docs/dashscope-transcription.md ("The
completion event"): ``source`` ``acs.dashscope``, ``type`` ``dashscope:System:AsyncTaskFinish``,
``data.user_api_unique_key`` ending in the model, China-time ``start_time``/``end_time``, and
either ``contain_result: true`` with ``output_result.output`` (the task's query output) or,
with ``results_in_events`` off, ``contain_result: false`` and no ``output_result`` (the generic
Model Studio example; the receiver must query the task). Pushes are signed per
docs/eventbridge-signature.md (see :mod:`sandbox.signing`). A push that is not answered 2xx is
retried per the target's retry policy (:mod:`sandbox.retry`); an event the policy gives up on
is logged and recorded as abandoned.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from sandbox.config import SandboxConfig
from sandbox.faults import chosen
from sandbox.retry import next_delay
from sandbox.signing import SigningKeys, signed_headers
from sandbox.state import API_KEY_ID, TRANSCRIPTION_KEY_PREFIX, Task, china_time
from sandbox.timing import TimerQueue

__all__ = ["Deliverer", "Delivery", "build_event", "chosen", "envelope", "event_data"]

log = structlog.get_logger("sandbox.eventbridge")


def _iso_utc(epoch: float) -> str:
    stamp = dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def event_data(task: Task, config: SandboxConfig) -> dict[str, Any]:
    """The ``data`` of the ``AsyncTaskFinish`` event of an ended ``task``."""
    assert task.ended_at is not None
    data: dict[str, Any] = {
        "task_id": task.task_id,
        "task_status": task.status,
        "start_time": china_time(task.scheduled_at or task.submitted_at, millis=False),
        "end_time": china_time(task.ended_at, millis=False),
        "user_api_unique_key": TRANSCRIPTION_KEY_PREFIX + task.model,
        "region": config.region,
        "request_id": task.request_id,
        "api_key_id": API_KEY_ID,
        "contain_result": config.results_in_events,
    }
    if config.results_in_events:
        data["output_result"] = {"output": task.output(), "usage": task.usage()}
    return data


def envelope(
    data: dict[str, Any], ended_at: float, config: SandboxConfig, now: float | None = None
) -> dict[str, Any]:
    """The CloudEvents envelope around ``data`` (a JSON-ready dict with a new ``id``)."""
    now = time.time() if now is None else now
    return {
        "id": str(uuid.uuid4()),
        "source": "acs.dashscope",
        "specversion": "1.0",
        "type": "dashscope:System:AsyncTaskFinish",
        "time": _iso_utc(ended_at),
        "datacontenttype": "application/json;charset=utf-8",
        "aliyunaccountid": config.account_id,
        "aliyunoriginalaccountid": config.account_id,
        "aliyunpublishtime": _iso_utc(now),
        "aliyuneventbusname": "default",
        "aliyunregionid": config.region,
        "data": data,
    }


def build_event(task: Task, config: SandboxConfig, now: float | None = None) -> dict[str, Any]:
    """The ``AsyncTaskFinish`` event of an ended ``task`` (a JSON-ready dict, new ``id``)."""
    assert task.ended_at is not None
    return envelope(event_data(task, config), task.ended_at, config, now)


@dataclass
class Delivery:
    """One push attempt and its answer, as recorded for tests."""

    event_id: str
    task_id: str
    copy: int
    attempt: int
    at: float
    status_code: int | None
    answer: Any
    error: str | None

    def view(self) -> dict[str, Any]:
        """A plain-JSON picture of the attempt."""
        return dict(self.__dict__)


class Deliverer:
    """Pushes events to ``config.callback_url``, recording every try.

    Pushes wait on the shared :class:`TimerQueue` and run on the deliverer's own pool of 8
    threads, so a slow target never holds up task processing.
    """

    def __init__(
        self,
        config: SandboxConfig,
        keys: SigningKeys,
        cert_url: str,
        timers: TimerQueue,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.config = config
        self.keys = keys
        self.cert_url = cert_url
        self.timers = timers
        self.client = httpx.Client(verify=verify, timeout=config.delivery_timeout_seconds)
        self.deliveries: list[Delivery] = []
        self.dropped: list[str] = []
        self.abandoned: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(8, "sandbox-delivery")

    def task_ended(self, task: Task) -> None:
        """Schedule the event of ``task`` and its duplicates, unless it is chosen to be dropped."""
        self.announce(task.task_id, functools.partial(build_event, task, self.config))

    def announce(self, task_id: str, build: Callable[[], dict[str, Any]]) -> None:
        """Schedule the event ``build()`` makes (once per copy: each copy has its own ``id``).

        Nothing is sent without a ``callback_url`` or when ``drop_fraction`` picks the task.
        """
        config = self.config
        if config.callback_url is None:
            return
        if chosen(config.seed + ":drop", task_id, config.drop_fraction):
            with self._lock:
                self.dropped.append(task_id)
            log.info("event dropped", task_id=task_id)
            return
        for copy in range(config.duplicates + 1):
            spread = config.duplicate_spread_seconds * copy / max(config.duplicates, 1)
            body = json.dumps(build(), ensure_ascii=False).encode()
            self._later(config.delivery_delay_seconds + spread, task_id, body, copy, 1)

    def _later(self, delay: float, task_id: str, body: bytes, copy: int, attempt: int) -> None:
        push = functools.partial(self._push, task_id, body, copy, attempt)
        self.timers.call_later(delay, lambda: self._submit(push))

    def _submit(self, push: Callable[[], None]) -> None:
        try:
            self._pool.submit(push)
        except RuntimeError:  # shut down while stopping
            return

    def _push(self, task_id: str, body: bytes, copy: int, attempt: int) -> None:
        config = self.config
        assert config.callback_url is not None
        headers = signed_headers(
            self.keys,
            url=config.callback_url,
            cert_url=self.cert_url,
            body=body,
            version=config.signature_version,
            token=config.signature_token,
            token_line=config.sign_token_line,
            trailing_newline=config.sign_trailing_newline,
        )
        headers["content-type"] = "application/json;charset=utf-8"
        status, answer, error = self._post(config.callback_url, body, headers)
        event_id = json.loads(body)["id"]
        record = Delivery(event_id, task_id, copy, attempt, time.time(), status, answer, error)
        with self._lock:
            self.deliveries.append(record)
        log.info(
            "event pushed",
            task_id=task_id,
            event_id=event_id,
            copy=copy,
            attempt=attempt,
            status_code=status,
            error=error,
        )
        if status is None or not 200 <= status < 300:
            self._retry(task_id, event_id, body, copy, attempt)

    def _retry(self, task_id: str, event_id: str, body: bytes, copy: int, attempt: int) -> None:
        delay = next_delay(self.config, event_id, attempt)
        if delay is not None:
            self._later(delay, task_id, body, copy, attempt + 1)
            return
        with self._lock:
            self.abandoned.append({"task_id": task_id, "event_id": event_id, "attempts": attempt})
        log.warning(
            "event abandoned",
            task_id=task_id,
            event_id=event_id,
            attempts=attempt,
            retry_strategy=self.config.retry_strategy,
        )

    def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, Any, str | None]:
        try:
            response = self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return None, None, type(exc).__name__
        try:
            answer: Any = response.json()
        except ValueError:
            answer = response.text[:1000]
        return response.status_code, answer, None

    def close(self) -> None:
        """Stop pushing and close the HTTP client."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
