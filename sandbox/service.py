"""The stand-in's core: accept tasks, process their files, serve results, announce the ends.

No Flask here: :mod:`sandbox.app` maps HTTP to these methods. Lifecycle of a task: ``PENDING``
for ``pending_seconds``, then ``RUNNING`` while every file is downloaded and probed on a bounded
thread pool (``download_workers``), then ``SUCCEEDED``/``FAILED`` no sooner than
``min_running_seconds`` after it started; then the completion event is handed to the
:class:`~sandbox.eventbridge.Deliverer`.
"""

from __future__ import annotations

import functools
import os
import ssl
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import structlog

from sandbox import results
from sandbox.config import SandboxConfig
from sandbox.eventbridge import Deliverer, chosen
from sandbox.links import RESULTS_PREFIX, LinkSigner
from sandbox.media import MediaError, fetch_media
from sandbox.protocol import ApiError, check_api_key, parse_submission
from sandbox.signing import CERT_PATH, SigningKeys
from sandbox.state import Subtask, Task
from sandbox.timing import TimerQueue, WindowLimiter


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One default TLS context for every HTTP client here (loading CA roots is slow)."""
    return ssl.create_default_context()


log = structlog.get_logger("sandbox")


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
        self.submissions: list[dict[str, Any]] = []
        self.queries: list[dict[str, Any]] = []
        self.limiter = WindowLimiter()
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

    # -- DashScope API --------------------------------------------------------------------

    def submit(self, headers: dict[str, str], body: object) -> dict[str, Any]:
        """Accept a task (``POST /services/audio/asr/transcription``); :class:`ApiError` if not.

        Returns the answer body ``{"request_id", "output": {"task_id", "task_status"}}``.
        """
        request_id = str(uuid.uuid4())
        record: dict[str, Any] = {"at": time.time(), "request_id": request_id, "status": 200}
        try:
            task = self._new_task(headers, body, request_id, record)
        except ApiError as exc:
            record.update(status=exc.status, code=exc.code)
            raise
        finally:
            with self._lock:
                self.submissions.append(record)
        self.timers.call_later(self.config.pending_seconds, lambda: self._start(task))
        log.info("task submitted", task_id=task.task_id, model=task.model, files=len(task.subtasks))
        output = {"task_id": task.task_id, "task_status": task.status}
        return {"request_id": request_id, "output": output}

    def _new_task(
        self, headers: dict[str, str], body: object, request_id: str, record: dict[str, Any]
    ) -> Task:
        check_api_key(headers.get("authorization"), self.config.api_key)
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

    def query(self, headers: dict[str, str], task_id: str) -> dict[str, Any]:
        """The answer body of ``GET /tasks/{task_id}``; :class:`ApiError` on key or rate errors."""
        request_id = str(uuid.uuid4())
        record: dict[str, Any] = {"at": time.time(), "task_id": task_id, "status": 200}
        with self._lock:
            self.queries.append(record)
        try:
            check_api_key(headers.get("authorization"), self.config.api_key)
            if not self.limiter.allow("query", self.config.query_qps):
                raise ApiError(429, "Throttling", "Requests throttling triggered.")
        except ApiError as exc:
            record["status"] = exc.status
            raise
        task = self.tasks.get(task_id)
        if task is None:
            output = {"task_id": task_id, "task_status": "UNKNOWN"}
            return {"request_id": request_id, "output": output}
        with self._lock:
            return {"request_id": request_id, "output": task.output(), "usage": task.usage()}

    def cancel(self, headers: dict[str, str], task_id: str) -> dict[str, Any]:
        """Cancel a PENDING task (``POST /tasks/{task_id}/cancel``); no event is sent for it.

        Raises :class:`ApiError`: 401 for a bad key, 404 for an unknown task, 400 when the task
        has left PENDING (the stand-in's codes; the real ones are not documented in the spec).
        """
        check_api_key(headers.get("authorization"), self.config.api_key)
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                raise ApiError(404, "NotFound", f"task {task_id} does not exist")
            if task.status != "PENDING":
                raise ApiError(400, "InvalidParameter", f"task {task_id} is {task.status}")
            task.status, task.ended_at = "CANCELED", time.time()
            for subtask in task.subtasks:
                subtask.status = "CANCELED"
        return {"request_id": str(uuid.uuid4())}

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
            task.status, task.scheduled_at = "RUNNING", time.time()
            task.remaining = len(task.subtasks)
            for subtask in task.subtasks:
                subtask.status = "RUNNING"
        for index in range(len(task.subtasks)):
            self._downloads.submit(self._process, task, index)

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

    # -- tests ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything seen so far, as plain JSON: submissions, queries, tasks, deliveries."""
        with self._lock:
            tasks = {task_id: task.summary() for task_id, task in self.tasks.items()}
            return {
                "submissions": list(self.submissions),
                "queries": list(self.queries),
                "tasks": tasks,
                "deliveries": [d.view() for d in self.deliverer.deliveries],
                "dropped": list(self.deliverer.dropped),
            }

    def close(self) -> None:
        """Stop timers and pools and close HTTP clients."""
        self.timers.stop()
        self._downloads.shutdown(wait=False, cancel_futures=True)
        self._workers.shutdown(wait=False, cancel_futures=True)
        self.http.close()
        self.deliverer.close()
