"""Archive one task: its event and result files (together), then its manifest, everywhere.

The layout and the manifest's fields are :mod:`worker.archiving.manifest`'s.

Idempotence and resume: a task whose manifest exists at every destination is done
(:meth:`Archiver.is_archived`). Progress is recorded in Redis after each object reaches every
destination (``asr:archive:progress:<task_id>[:<hash of the destination URLs>]``, a hash:
``event`` and ``file:<n>`` → the file record as JSON), so a run that died half-way resumes
with what is missing, and rewrites the same keys if it repeats a step. Callers hold the
task's :class:`worker.archiving.lease.Lease`.

Failures: a permanent error of one file (oversized, not JSON, a URL outside the pattern, an
expired link after one fresh query: ``result_expired``; an unexpected exception:
``internal_error``) marks that file with ``error`` and the others go on; a transient error
stops the run after the other files were tried (the caller retries), unless the caller's
``final()`` says no retry is left, when it marks the file like a permanent one, so the
manifest records every file. A task-level permanent error (bad event, unknown model, a rejected
query) gives a manifest with ``archive_error``.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import redis
import structlog

from core.errors import ExpiredLinkError, PermanentError, PipelineError, Reason, TransientError
from core.events import (
    UNFINISHED_STATUSES,
    ResultEntry,
    TaskEvent,
    parse_event,
    redact_event,
    with_output,
)
from core.media import Media, media_for
from core.store import Receipt
from worker import metrics
from worker.archiving import manifest as mf
from worker.archiving.destinations import Destination
from worker.archiving.fetch import ResultFetcher

log = structlog.get_logger(__name__)

PROGRESS_KEY = "asr:archive:progress:{task_id}"
QueryFn = Callable[[str], dict[str, Any]]
"""``GET /tasks/{task_id}``: the full JSON answer (`docs/dashscope-transcription.md`)."""


@dataclass
class Outcome:
    """What a run produced: the ``manifest`` written and the errors recorded in it."""

    manifest: dict[str, Any]
    errors: list[PipelineError] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when nothing failed on our side (DashScope's own failures do not count)."""
        return not self.errors


class Progress:
    """What of one task already reached every destination, in Redis (expires with the TTL).

    ``destinations`` (their URLs) scope the record: after ``ARCHIVE_URLS`` changes, a replay
    writes everything to the new set instead of trusting progress made for the old one.
    The hash is read once per run (one ``HGETALL``, on the first :meth:`done`); each record is
    one ``HSET``, the first of a run with the ``EXPIRE`` in the same transaction (so the key never
    lives without its expiry). Thread-safe.
    """

    def __init__(
        self, client: redis.Redis, task_id: str, ttl_s: int, destinations: Sequence[str] = ()
    ) -> None:
        self._redis = client
        self._key = PROGRESS_KEY.format(task_id=task_id)
        if destinations:
            scope = hashlib.sha256("\n".join(destinations).encode()).hexdigest()[:12]
            self._key += f":{scope}"
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] | None = None
        self._expiring = False

    def done(self, name: str) -> dict[str, Any] | None:
        """The record stored for ``name`` (``event`` or ``file:<n>``), or None."""
        with self._lock:
            if self._records is None:
                raw = cast("dict[bytes, bytes]", self._redis.hgetall(self._key))
                self._records = {k.decode(): json.loads(v) for k, v in raw.items()}
            return self._records.get(name)

    def mark(self, name: str, record: dict[str, Any]) -> None:
        """Record ``name`` as written everywhere."""
        with self._lock:  # one caller sets the expiry, even when objects finish together
            first, self._expiring = not self._expiring, True
        try:
            if first:  # HSET and EXPIRE at once
                pipe = self._redis.pipeline(transaction=True)
                pipe.hset(self._key, name, json.dumps(record))
                pipe.expire(self._key, self._ttl)
                pipe.execute()
            else:
                self._redis.hset(self._key, name, json.dumps(record))
        except redis.RedisError:
            if first:  # the next mark sets the expiry instead
                with self._lock:
                    self._expiring = False
            raise
        with self._lock:
            if self._records is not None:
                self._records[name] = record


class Archiver:
    """Archive tasks to ``destinations``; ``query`` fetches a task when the event lacks it.

    ``guard`` is called before every write (the lease check: it raises when the lease is lost).
    Up to ``file_concurrency`` result files of one task are downloaded and written at once
    (httpx, boto3 and oss2 clients are shared by the threads; all are thread-safe).
    """

    def __init__(
        self,
        destinations: Sequence[Destination],
        fetcher: ResultFetcher,
        *,
        query: QueryFn | None = None,
        guard: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        file_concurrency: int = 4,
    ) -> None:
        self.destinations = list(destinations)
        self.fetcher = fetcher
        self.query = query
        self.guard = guard
        self.clock = clock
        self.file_concurrency = file_concurrency
        self._fresh_lock = threading.Lock()

    def is_archived(self, task_id: str) -> bool:
        """True when ``<task_id>/manifest.json`` exists at every destination."""
        return all(d.exists(mf.manifest_key(task_id)) for d in self.destinations)

    def run(
        self,
        receipt: Receipt,
        progress: Progress,
        *,
        final: Callable[[], bool] = lambda: False,
        media: Mapping[str, Media] | None = None,
    ) -> Outcome:
        """Archive ``receipt``'s task and write its manifest; returns the outcome.

        ``media`` is the task's media index (:func:`core.media.read_media`): each file's local
        recording goes into its manifest entry.

        Raises :class:`TransientError` when a file may succeed later (nothing is lost: the
        progress is kept), unless ``final()`` (asked only then) is True; errors while writing
        the event or the manifest, or querying the task, always propagate.
        """
        try:
            event = self._resolve(parse_event(receipt.body))
        except PermanentError as exc:
            self._event_json(receipt, progress)
            return self.fail(receipt, exc)
        write_event = functools.partial(self._event_json, receipt, progress)
        files, errors = self._files(event, progress, final, media or {}, write_event)
        manifest = mf.new_manifest(receipt, event.model, event.task_status, files, self.clock())
        manifest.update(code=event.code, message=event.message)
        manifest["archive_status"] = "partial" if errors else "complete"
        self._write_manifest(receipt.task_id, manifest)
        return Outcome(manifest, errors)

    def fail(self, receipt: Receipt, exc: PipelineError) -> Outcome:
        """Write a manifest that records a task-level failure ``exc``; returns the outcome."""
        metrics.failure(exc.reason)
        manifest = mf.failed_manifest(receipt, exc, self.clock())
        self._write_manifest(receipt.task_id, manifest)
        return Outcome(manifest, [exc])

    def _resolve(self, event: TaskEvent) -> TaskEvent:
        event.family  # noqa: B018  # raises PermanentError(unknown_model) before any query
        if event.entries is not None:
            return event
        if self.query is None:
            raise PermanentError("event has no result and no query client", reason=Reason.NO_RESULT)
        queried = with_output(event, self.query(event.task_id).get("output"))
        if queried.task_status in UNFINISHED_STATUSES:
            raise TransientError(f"task is {queried.task_status}", reason=Reason.TASK_NOT_FINISHED)
        return queried

    def _event_json(self, receipt: Receipt, progress: Progress) -> None:
        if progress.done("event"):
            return
        body = redact_event(receipt.body)
        self._put_bytes(mf.event_key(receipt.task_id), body)
        progress.mark("event", {"bytes": len(body)})

    def _files(
        self,
        event: TaskEvent,
        progress: Progress,
        final: Callable[[], bool],
        media: Mapping[str, Media],
        write_event: Callable[[], None],
    ) -> tuple[list[dict[str, Any]], list[PipelineError]]:
        entries = list(event.entries or ())
        only = len(entries) == 1
        files = [mf.file_record(e, media_for(e.file_url, media, only_file=only)) for e in entries]
        fresh: dict[str, TaskEvent] = {}

        def archive(n: int) -> PipelineError | None:
            if not entries[n].succeeded:
                return None
            try:
                files[n].update(self._archive_entry(event, entries[n], progress, fresh))
            except PipelineError as exc:
                return exc
            except Exception as exc:  # a bug in one file: record it there, keep the others
                log.exception("archive_file_internal_error", index=n)
                return PermanentError(repr(exc)[:500], reason=Reason.INTERNAL_ERROR)
            return None

        outcomes = self._each(archive, len(entries), write_event)
        failed = [exc for exc in outcomes if exc is not None]
        transient = [exc for exc in failed if isinstance(exc, TransientError)]
        if transient and not final():
            raise transient[0]
        errors: list[PipelineError] = []
        for record, exc in zip(files, outcomes, strict=True):
            if exc is not None:
                record["error"] = mf.error_record(exc)
                metrics.failure(exc.reason)
                errors.append(exc)
        return files, errors

    def _each(
        self,
        archive: Callable[[int], PipelineError | None],
        count: int,
        alongside: Callable[[], None],
    ) -> list[PipelineError | None]:
        """``archive(n)`` for every file on up to ``file_concurrency`` threads, and meanwhile
        ``alongside()`` here (the event's own object: one store round trip less per task).

        An exception of ``alongside`` propagates once the files in flight have finished.
        """
        if count == 0 or self.file_concurrency <= 1:
            alongside()
            return [archive(n) for n in range(count)]
        with ThreadPoolExecutor(max_workers=min(self.file_concurrency, count)) as pool:
            # each file in a copy of this context: log lines keep the bound task_id
            futures = [
                pool.submit(contextvars.copy_context().run, archive, n) for n in range(count)
            ]
            alongside()
            return [future.result() for future in futures]

    def _archive_entry(
        self, event: TaskEvent, entry: ResultEntry, progress: Progress, fresh: dict[str, TaskEvent]
    ) -> dict[str, Any]:
        """Archive one file (unless done); on an expired link, one fresh query per run."""
        name = f"file:{entry.index}"
        if done := progress.done(name):
            return done
        try:
            written = self._one_file(event.task_id, entry)
        except ExpiredLinkError as exc:
            renewed = self._renewed_entry(event, entry, fresh)
            if renewed is None:
                raise PermanentError(str(exc), reason=Reason.RESULT_EXPIRED) from exc
            try:
                written = self._one_file(event.task_id, renewed)
            except ExpiredLinkError as again:
                raise PermanentError(str(again), reason=Reason.RESULT_EXPIRED) from again
        progress.mark(name, written)
        return written

    def _renewed_entry(
        self, event: TaskEvent, entry: ResultEntry, fresh: dict[str, TaskEvent]
    ) -> ResultEntry | None:
        """``entry`` with a new link from one task query per run; None when there is none.

        A query refused for good (no API key, the task is gone) means no fresh link; a
        transient query failure propagates (retry later).
        """
        if self.query is None:
            return None
        with self._fresh_lock:  # files run in parallel; one query per run
            if "event" not in fresh:
                fresh["event"] = self._query_quietly(event)
        for candidate in fresh["event"].entries or ():
            same = candidate.index == entry.index and candidate.succeeded
            if same and candidate.transcription_url != entry.transcription_url:
                return candidate
        return None

    def _query_quietly(self, event: TaskEvent) -> TaskEvent:
        assert self.query is not None
        try:
            return with_output(event, self.query(event.task_id).get("output"))
        except PermanentError as exc:
            log.info("fresh_link_query_refused", reason=exc.reason)
            return with_output(event, {})

    def _one_file(self, task_id: str, entry: ResultEntry) -> dict[str, Any]:
        key = mf.result_key(task_id, entry.index)
        with self.fetcher.download(entry.transcription_url or "") as body:
            for destination in self.destinations:
                self.guard()
                if body.path is not None:
                    destination.put_file(key, body.path, body.size, body.sha256)
                else:
                    destination.put_bytes(key, body.data or b"", body.sha256)
                metrics.file_archived(destination.kind, body.size)
            record = {"key": key, "bytes": body.size, "sha256": body.sha256}
            if body.redacted:  # signed query strings removed (worker.archiving.scrub)
                record.update(
                    redacted=True, served_bytes=body.served_size, served_sha256=body.served_sha256
                )
            return record

    def _write_manifest(self, task_id: str, manifest: dict[str, Any]) -> None:
        self._put_bytes(mf.manifest_key(task_id), mf.encode(manifest))

    def _put_bytes(self, key: str, body: bytes) -> None:
        for destination in self.destinations:
            self.guard()
            destination.put_bytes(key, body)
