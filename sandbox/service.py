"""The stand-in's core: accept tasks, process their files, serve results, announce the ends.

No Flask here: :mod:`sandbox.app` maps HTTP to these methods. Lifecycle of a task: ``PENDING``
for ``pending_seconds`` (``suspend_fraction`` of tasks then sit ``SUSPENDED`` for
``suspend_seconds``), then ``RUNNING`` while every file is downloaded and probed on a bounded
thread pool (``download_workers``), then ``SUCCEEDED``/``FAILED`` no sooner than
``min_running_seconds`` after it started; then the completion event is handed to the
:class:`~sandbox.eventbridge.Deliverer`. A ``PENDING`` task can be canceled (``CANCELED``).

Every DashScope call checks the key, then the account-wide error window
(:class:`~sandbox.faults.AccountState`), then its rate limit: submissions per model family,
and query, list and cancel together in one account budget (docs/dashscope-transcription.md,
"Other task endpoints": "all inside the same 20 QPS account budget").
"""

from __future__ import annotations

import functools
import itertools
import os
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from sandbox import results
from sandbox.config import AccountError, SandboxConfig
from sandbox.eventbridge import Deliverer, envelope
from sandbox.faults import AccountState, ErrorBodies, LostAnswer, chosen, lost_answer
from sandbox.foreign import ForeignTask, make_foreign_task
from sandbox.links import RESULTS_PREFIX, LinkSigner
from sandbox.media import MediaError, fetch_media
from sandbox.protocol import ApiError, check_api_key, parse_submission
from sandbox.signing import CERT_PATH, SigningKeys
from sandbox.state import Subtask, Task
from sandbox.tasklist import Listed, list_page, parse_list_query
from sandbox.timing import TimerQueue, WindowLimiter


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One default TLS context for every HTTP client here (loading CA roots is slow)."""
    return ssl.create_default_context()


log = structlog.get_logger("sandbox")


@dataclass(frozen=True)
class Submitted:
    """A submission's answer ``body`` and whether (and how) that answer is to be lost."""

    body: dict[str, Any]
    lost: LostAnswer | None = None


class SandboxService:
    """State and behaviour of one sandbox reachable at ``base_url`` (``http://host:port``).

    ``keys`` signs the callbacks; by default a new key pair and certificate are generated.
    """

    def __init__(
        self, config: SandboxConfig, base_url: str, keys: SigningKeys | None = None
    ) -> None:
        self.config = config
        self.base_url = base_url.rstrip("/")
        self.cert_url = self.base_url + CERT_PATH
        self.keys = keys or SigningKeys()
        self.links = LinkSigner(os.urandom(32), self.base_url, config.result_url_ttl_seconds)
        self.tasks: dict[str, Task] = {}
        self.foreign: dict[str, ForeignTask] = {}
        self.submissions: list[dict[str, Any]] = []
        self.queries: list[dict[str, Any]] = []
        self.limiter = WindowLimiter()
        seconds = config.account_error_seconds if config.account_error else 0.0
        self.account = AccountState(config.account_error, seconds)
        self.errors = ErrorBodies(config)
        self._submit_numbers = itertools.count()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._downloads = ThreadPoolExecutor(config.download_workers, "sandbox-download")
        self._workers = ThreadPoolExecutor(8, "sandbox-worker")
        self.timers = TimerQueue(self._workers)
        self.http = httpx.Client(
            verify=tls_context(),
            timeout=config.download_timeout_seconds,
            follow_redirects=True,
            limits=httpx.Limits(max_connections=config.download_workers * 2),
        )
        self.deliverer = Deliverer(config, self.keys, self.cert_url, self.timers, tls_context())
        self._schedule_foreign()

    # -- DashScope API --------------------------------------------------------------------

    def submit(self, headers: dict[str, str], body: object) -> Submitted:
        """Accept a task (``POST /services/audio/asr/transcription``); :class:`ApiError` if not.

        The answer body is ``{"request_id", "output": {"task_id", "task_status"}}``;
        ``lost`` says whether the HTTP layer must lose it (``ambiguous_submit_fraction``, chosen
        by the 0-based number of the submission): the task exists and runs either way.
        """
        request_id = str(uuid.uuid4())
        number = next(self._submit_numbers)
        record: dict[str, Any] = {"at": time.time(), "request_id": request_id, "status": 200}
        try:
            task = self._new_task(headers, body, request_id, record)
        except ApiError as exc:
            record.update(status=exc.status, code=exc.code)
            raise
        finally:
            with self._lock:
                self.submissions.append(record)
        lost = lost_answer(self.config, number)
        record["answer_lost"] = lost
        self.timers.call_later(self.config.pending_seconds, lambda: self._start(task))
        log.info("task submitted", task_id=task.task_id, model=task.model, answer_lost=lost)
        output = {"task_id": task.task_id, "task_status": task.status}
        return Submitted({"request_id": request_id, "output": output}, lost)

    def _new_task(
        self, headers: dict[str, str], body: object, request_id: str, record: dict[str, Any]
    ) -> Task:
        check_api_key(headers.get("authorization"), self.config.api_key)
        self.account.check()
        if headers.get("x-dashscope-async", "").lower() != "enable":
            message = "current user api does not support synchronous calls"
            raise ApiError(403, "AccessDenied", message)
        model, family, urls, parameters = parse_submission(body, self.config.max_files)
        record.update(model=model, files=len(urls))
        rate = self.config.submit_rps.get(family, 10.0)
        if not self.limiter.allow(f"submit:{family}", rate):
            raise ApiError(429, "Throttling.RateQuota", "Requests rate limit exceeded.")
        task_id = str(uuid.uuid4())
        subtasks = [Subtask(url) for url in urls]
        task = Task(task_id, request_id, model, family, parameters, subtasks, time.time())
        record["task_id"] = task_id
        with self._lock:
            self.tasks[task_id] = task
        return task

    def _admit(self, headers: dict[str, str], route: str, task_id: str | None) -> None:
        """Key, account and the shared query budget for ``/tasks`` calls; records the call."""
        record: dict[str, Any] = {"at": time.time(), "route": route, "task_id": task_id}
        record["status"] = 200
        with self._lock:
            self.queries.append(record)
        try:
            check_api_key(headers.get("authorization"), self.config.api_key)
            self.account.check()
            if not self.limiter.allow("query", self.config.query_qps):
                raise ApiError(429, "Throttling", "Requests throttling triggered.")
        except ApiError as exc:
            record.update(status=exc.status, code=exc.code)
            raise

    def query(self, headers: dict[str, str], task_id: str) -> dict[str, Any]:
        """The answer body of ``GET /tasks/{task_id}``; :class:`ApiError` on key or rate errors."""
        request_id = str(uuid.uuid4())
        self._admit(headers, "query", task_id)
        with self._lock:
            task = self.tasks.get(task_id)
            if task is not None:
                return {"request_id": request_id, "output": task.output(), "usage": task.usage()}
            foreign = self.foreign.get(task_id)
            if foreign is not None:
                output, usage = foreign.output(), foreign.usage()
                return {"request_id": request_id, "output": output, "usage": usage}
        output = {"task_id": task_id, "task_status": "UNKNOWN"}
        return {"request_id": request_id, "output": output}

    def list_tasks(self, headers: dict[str, str], args: Mapping[str, str]) -> dict[str, Any]:
        """The answer body of ``GET /tasks?...`` (shape in :mod:`sandbox.tasklist`).

        Raises :class:`ApiError`: key, account and rate errors as for a query, 400
        ``InvalidParameter`` for a bad window, status or page.
        """
        request_id = str(uuid.uuid4())
        self._admit(headers, "list", None)
        query = parse_list_query(args, time.time())
        config = self.config
        with self._lock:
            tasks: list[Listed] = [*self.tasks.values(), *self.foreign.values()]
            page = list_page(tasks, query, region=config.region, account_id=config.account_id)
        return {"request_id": request_id, **page}

    def cancel(self, headers: dict[str, str], task_id: str) -> dict[str, Any]:
        """Cancel a PENDING task (``POST /tasks/{task_id}/cancel``); answers ``{"request_id"}``.

        Raises :class:`ApiError`: key, account and rate errors as for a query; 400
        ``UnsupportedOperation`` for any task that is not PENDING, unknown ones included
        (docs/dashscope-transcription.md: "only a PENDING task can be canceled"). No event is
        sent for a canceled task unless ``event_on_cancel`` is set (the documents name events
        for succeeded and failed tasks only).
        """
        self._admit(headers, "cancel", task_id)
        with self._lock:
            task = self.tasks.get(task_id)
            status = "UNKNOWN" if task is None else task.status
            if task is None or status != "PENDING":
                status = self.foreign[task_id].status if task_id in self.foreign else status
                message = f"Failed to cancel the task {task_id}: it is {status}, not PENDING."
                raise ApiError(400, "UnsupportedOperation", message)
            task.status, task.ended_at = "CANCELED", time.time()
            for subtask in task.subtasks:
                subtask.status = "CANCELED"
        log.info("task canceled", task_id=task_id)
        if self.config.event_on_cancel:
            self.deliverer.task_ended(task)
        return {"request_id": str(uuid.uuid4())}

    def error_body(self, exc: ApiError) -> dict[str, Any]:
        """The JSON body of an error answer (``message``, or ``msg`` for some; see faults)."""
        return self.errors.body(str(uuid.uuid4()), exc)

    def set_account_error(self, kind: AccountError | None, seconds: float) -> None:
        """From now on, fail every DashScope call with ``kind``'s error for ``seconds``.

        ``kind`` is ``"arrearage"`` (403 ``Arrearage``), ``"allocation-quota"`` (429
        ``Throttling.AllocationQuota``) or ``None`` (back to normal); raises ``ValueError``
        for another value.
        """
        self.account.set(kind, seconds)
        log.info("account error set", kind=kind, seconds=seconds)

    def hold(self, seconds: float) -> None:
        """Block the calling request thread ``seconds`` (cut short when the sandbox closes)."""
        self._closed.wait(seconds)

    def result(self, path: str, expires: str | None, signature: str | None) -> bytes | None:
        """Bytes of the result file at ``path`` (``/results/<task>/<n>.json``) if the link is valid.

        Returns ``None`` for a missing file; raises :class:`ApiError` (403) for a bad or expired
        signature, as OSS does.
        """
        if not self.links.check(path, expires, signature):
            raise ApiError(403, "AccessDenied", "Request has expired or the signature is wrong.")
        task_id, _, name = path[len(RESULTS_PREFIX) :].partition("/")
        task = self.tasks.get(task_id)
        index = name.removesuffix(".json")
        if task is None or not index.isdigit():
            return None
        return task.results.get(int(index))

    # -- processing -----------------------------------------------------------------------

    def _start(self, task: Task) -> None:
        with self._lock:
            if task.status == "CANCELED":
                return
            if task.status == "PENDING" and self._suspends(task):
                task.status = "SUSPENDED"
                self.timers.call_later(self.config.suspend_seconds, lambda: self._start(task))
                return
            task.status, task.scheduled_at = "RUNNING", time.time()
            task.remaining = len(task.subtasks)
            for subtask in task.subtasks:
                subtask.status = "RUNNING"
        for index in range(len(task.subtasks)):
            self._downloads.submit(self._process, task, index)

    def _suspends(self, task: Task) -> bool:
        return chosen(self.config.seed + ":suspend", task.task_id, self.config.suspend_fraction)

    def _process(self, task: Task, index: int) -> None:
        subtask = task.subtasks[index]
        try:
            body = self._transcribe(task, index)
        except MediaError as exc:
            with self._lock:
                subtask.status, subtask.code, subtask.message = "FAILED", exc.code, exc.message
                task.remaining -= 1
        else:
            path = f"{RESULTS_PREFIX}{task.task_id}/{index:04d}.json"
            with self._lock:
                task.results[index] = body
                subtask.transcription_url = self.links.url_for(path)
                subtask.status = "SUCCEEDED"
                task.remaining -= 1
        with self._lock:
            last = task.remaining == 0
        if last:
            assert task.scheduled_at is not None
            wait = task.scheduled_at + self.config.min_running_seconds - time.time()
            self.timers.call_later(wait, lambda: self._finish(task))

    def _transcribe(self, task: Task, index: int) -> bytes:
        config = self.config
        file_url = task.subtasks[index].file_url
        if chosen(config.seed + ":fail", f"{task.task_id}:{index}", config.fail_fraction):
            raise MediaError(config.fail_code, "The sandbox failed this file on purpose.")
        media = fetch_media(
            self.http, file_url, max_bytes=config.max_media_bytes, use_ffprobe=config.use_ffprobe
        )
        task.subtasks[index].duration_ms = media.duration_ms
        build = results.qwen_result if task.family.startswith("qwen") else results.classic_result
        shown = file_url if config.echo_signed_file_url else file_url.split("?", 1)[0]
        return results.render(build(shown, media, task.parameters), config.result_padding_bytes)

    def _finish(self, task: Task) -> None:
        with self._lock:
            task.finish(time.time())
        log.info("task ended", task_id=task.task_id, status=task.status, **task.metrics())
        self.deliverer.task_ended(task)

    def _schedule_foreign(self) -> None:
        interval = self.config.foreign_event_interval_seconds
        for index in range(self.config.foreign_events):
            self.timers.call_later((index + 1) * interval, functools.partial(self._foreign, index))

    def _foreign(self, index: int) -> None:
        task = make_foreign_task(index, time.time(), self.base_url)
        with self._lock:
            self.foreign[task.task_id] = task
        log.info("foreign task ended", task_id=task.task_id, model=task.model)
        config = self.config
        data = functools.partial(task.event_data, config.region, config.results_in_events)
        ended = time.time() if task.ended_at is None else task.ended_at
        self.deliverer.announce(task.task_id, lambda: envelope(data(), ended, config))

    # -- tests ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything seen so far, as plain JSON (see :class:`sandbox.server.Sandbox.state`)."""
        with self._lock:
            tasks = {task_id: task.summary() for task_id, task in self.tasks.items()}
            return {
                "submissions": list(self.submissions),
                "queries": list(self.queries),
                "tasks": tasks,
                "foreign": {task_id: task.model for task_id, task in self.foreign.items()},
                "deliveries": [d.view() for d in self.deliverer.deliveries],
                "dropped": list(self.deliverer.dropped),
                "abandoned": list(self.deliverer.abandoned),
                "account_error": self.account.active(),
            }

    def close(self) -> None:
        """Stop timers and pools, release held answers and close HTTP clients."""
        self._closed.set()
        self.timers.stop()
        self._downloads.shutdown(wait=False, cancel_futures=True)
        self._workers.shutdown(wait=False, cancel_futures=True)
        self.http.close()
        self.deliverer.close()
