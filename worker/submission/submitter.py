"""The submitter's core, free of Celery: upload a planned batch, sign, pace, submit, record.

A run's plan (batches of local files) is stored by :class:`SubmissionStore.create_run`; each
batch is one call of :meth:`Submitter.submit_batch`, which is safe to repeat, concurrently
too: uploads skip objects already in the bucket, a batch submitted once is never submitted
again, and the decision to submit is taken under a per-batch Redis lock.
Submissions are paced per model family by the shared Redis token bucket
(:func:`worker.ratelimit.submit_limiter`, ``SUBMIT_RATES``).

Two guards keep a batch from becoming two tasks, or failing for an account problem:

- every submit call is preceded by a stored intent (:mod:`worker.submission.uncertain`);
  a batch that finds one (the answer was lost, or the worker died before recording it)
  resolves it from the task list before it may submit again;
- the account breaker (:mod:`worker.submission.breaker`) pauses every batch while DashScope
  answers ``Arrearage`` or ``Throttling.AllocationQuota``.

A batch that must wait raises :class:`BatchDeferred`: the Celery task sends it again later
without counting a retry; its files stay pending.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis
import structlog

from core.errors import PermanentError, Reason, TransientError
from core.models import family_of
from core.settings import Settings
from worker.dashscope import AccountBlockedError, AmbiguousSubmitError, DashScopeClient
from worker.ratelimit import RateLimiter, query_limiter, submit_limiter
from worker.submission.batching import fingerprint, plan_batches
from worker.submission.breaker import AccountBreaker
from worker.submission.media import LocalMedia, MediaBucket, key_in_url, sha256_of
from worker.submission.submissions import FileEntry, FileState, Submission, SubmissionStore
from worker.submission.uncertain import Intent, IntentStore, Resolver, url_path

log = structlog.get_logger(__name__)

RATE_WAIT_S = 120.0
"""Longest wait for a submission token before the batch is retried later."""
RETRY_RATE_WAIT_S = 10.0
"""Longest wait for the token of a submit retry (after a 429), taken while the batch is locked."""
_LOCK = "asr:run:{}:batch:{}:lock"
# KEYS[1] lock; ARGV[1] owner token. Delete only our own lock.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class BatchDeferred(Exception):  # a control-flow signal, not an error to report
    """Run the batch again in ``seconds``, without counting a retry (``reason`` says why)."""

    def __init__(self, seconds: float, reason: Reason) -> None:
        super().__init__(f"batch deferred {seconds:.1f} s: {reason}")
        self.seconds = seconds
        self.reason = reason


def subtask_failures(output: dict[str, Any], files: list[FileEntry]) -> dict[str, str]:
    """Object keys of ``files`` that failed in a task ``output``, each with ``code: message``.

    A FAILED or CANCELED task without per-file results (e.g. Qwen) fails every file; otherwise each
    ``results[]`` entry with ``subtask_status`` FAILED is matched by its ``file_url``
    (`docs/dashscope-transcription.md`, "Querying a task").
    """
    keys = [entry.key for entry in files]
    results = output.get("results")
    if not isinstance(results, list):
        if output.get("task_status") not in ("FAILED", "CANCELED"):
            return {}
        return dict.fromkeys(keys, f"{output.get('code', '')}: {output.get('message', '')}")
    failed: dict[str, str] = {}
    for item in results:
        if isinstance(item, dict) and item.get("subtask_status") == "FAILED":
            key = key_in_url(str(item.get("file_url", "")), keys)
            if key is not None:
                failed[key] = f"{item.get('code', '')}: {item.get('message', '')}"
    return failed


@dataclass
class Submitter:
    """Everything a batch needs; build with :meth:`from_settings`."""

    settings: Settings
    store: SubmissionStore
    media: MediaBucket
    client: DashScopeClient
    redis_client: redis.Redis

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis) -> Submitter:
        """A submitter for ``MEDIA_URL``, DashScope and the Redis ``client``."""
        return cls(
            settings,
            SubmissionStore(client, settings.submission_ttl_seconds),
            MediaBucket.from_settings(settings),
            DashScopeClient.from_settings(settings),
            client,
        )

    @property
    def breaker(self) -> AccountBreaker:
        """The account breaker shared by every process (``DASHSCOPE_BREAKER_PROBE_SECONDS``)."""
        return AccountBreaker(self.redis_client, self.settings.dashscope_breaker_probe_seconds)

    @property
    def intents(self) -> IntentStore:
        """Submit attempts whose outcome is not recorded yet."""
        return IntentStore(self.redis_client, self.settings.submission_ttl_seconds)

    def submit_batch(self, run_id: str, n: int) -> str | None:
        """Upload, sign and submit batch ``n`` of ``run_id``; its task id, or None if nothing new.

        Raises :class:`BatchDeferred` (breaker open, an earlier attempt not resolved yet,
        another execution holds the batch), :class:`core.errors.TransientError` (retry later)
        or :class:`core.errors.PermanentError` (the batch's files are failed).
        """
        done = self.store.batch_task(run_id, n)
        info = self.store.run_info(run_id)
        if done is not None:
            self._mark_submitted(run_id, done)  # a crash may have come between record and marks
            return done
        if info is None:
            return None
        probe = self._admit()
        intent = self.intents.load(run_id, n) or self._plan(run_id, n, info)
        if intent is None:
            return None
        with self._batch_lock(run_id, n):
            done = self.store.batch_task(run_id, n)
            if done is not None:
                return done
            stored = self.intents.load(run_id, n)
            if stored is not None:
                found = self._resolve(run_id, n, stored)
                if found is not None:
                    return self._record(run_id, n, stored, found)
                intent = stored
            return self._attempt(run_id, n, intent, probe=probe)

    def _admit(self) -> bool:
        """Go on unless the account breaker is open; True when this batch is its probe."""
        admission = self.breaker.admit()
        if admission.wait > 0:
            raise BatchDeferred(admission.wait + random.uniform(0, 1), Reason.ACCOUNT_BLOCKED)
        return admission.probe

    def _plan(self, run_id: str, n: int, info: dict[str, Any]) -> Intent | None:
        """Upload the batch's files and drop content submitted before: the attempt to make."""
        entries = self._upload_all(run_id, self.store.batch(run_id, n))
        model, parameters = info["model"], info["parameters"]
        fresh, prints = self._drop_duplicates(run_id, model, parameters, entries, info["force"])
        if not fresh:
            return None
        return Intent(0.0, model, parameters, fresh, prints, [])

    @contextmanager
    def _batch_lock(self, run_id: str, n: int) -> Iterator[None]:
        """Hold batch ``n``'s lock; :class:`BatchDeferred` while another execution holds it.

        The lock outlives one resolution pass plus the wait for a submission turn and one
        submit call (:data:`RATE_WAIT_S` and two client timeouts) and expires on its own when
        its holder dies.
        """
        key, token = _LOCK.format(run_id, n), uuid.uuid4().hex
        ttl_s = RATE_WAIT_S + 2 * self.settings.dashscope_timeout_seconds + 30
        if not self.redis_client.set(key, token, nx=True, px=int(ttl_s * 1000)):
            wait_ms = max(int(self.redis_client.pttl(key)), 1000)
            raise BatchDeferred(wait_ms / 1000 + random.uniform(0, 1), Reason.BATCH_DEFERRED)
        try:
            yield
        finally:
            self.redis_client.eval(_UNLOCK, 1, key, token)

    def _resolve(self, run_id: str, n: int, intent: Intent) -> str | None:
        """The task an earlier attempt created; None once it surely created none.

        Raises :class:`BatchDeferred` while the list is not settled or DashScope refuses the
        account; other errors of the list and query calls propagate.
        """
        settle_s = self.settings.submit_uncertain_settle_seconds
        resolver = Resolver(self.client, self._query_limiter(), self.store, settle_s)
        try:
            verdict = resolver.resolve(intent, time.time())
        except AccountBlockedError as exc:
            self.breaker.trip(exc.code)
            raise BatchDeferred(self.breaker.probe_s, Reason.ACCOUNT_BLOCKED) from exc
        self.intents.save(run_id, n, intent)  # looks and checked candidates
        if verdict.task_id is not None:
            log.info("uncertain_submit_found", run_id=run_id, batch=n, task_id=verdict.task_id)
            return verdict.task_id
        if not verdict.settled:
            raise BatchDeferred(self._recheck_s(), Reason.SUBMIT_UNCERTAIN)
        log.info("uncertain_submit_not_created", run_id=run_id, batch=n, looks=intent.looks)
        return None

    def _recheck_s(self) -> float:
        """Seconds between resolution passes: a quarter of the settle time, 1 to 30 s."""
        return min(30.0, max(1.0, self.settings.submit_uncertain_settle_seconds / 4))

    def _attempt(self, run_id: str, n: int, intent: Intent, *, probe: bool) -> str:
        """Wait for the family's turn, store the intent, submit, record; see
        :meth:`submit_batch` for what it raises.

        The turn is taken last, just before the request, so requests reach DashScope as evenly
        spaced as they were paced. Unless this is the breaker's probe, a breaker opened since
        the gate defers the batch.
        """
        urls = [self.media.sign(entry.key) for entry in intent.files]
        paths = [url_path(url) for url in urls]
        self._take_submit_token(intent.model)
        if not probe and self.breaker.open_code() is not None:
            raise BatchDeferred(self.breaker.probe_s, Reason.ACCOUNT_BLOCKED)
        attempt = Intent(
            time.time(), intent.model, intent.parameters, intent.files, intent.prints, paths
        )
        self.intents.save(run_id, n, attempt)
        try:
            pace = partial(self._take_submit_token, attempt.model, RETRY_RATE_WAIT_S)
            task_id = self.client.submit(attempt.model, urls, attempt.parameters, pace=pace)
        except AmbiguousSubmitError as exc:
            log.warning("submit_uncertain", run_id=run_id, batch=n, error=str(exc))
            raise BatchDeferred(self._recheck_s(), Reason.SUBMIT_UNCERTAIN) from exc
        except AccountBlockedError as exc:
            self.intents.clear(run_id, n)  # a definite refusal: no task was created
            self.breaker.trip(exc.code)
            raise BatchDeferred(self.breaker.probe_s, Reason.ACCOUNT_BLOCKED) from exc
        except (TransientError, PermanentError, ValueError):
            self.intents.clear(run_id, n)  # refused or never sent: no task was created
            raise
        self.breaker.reset()
        return self._record(run_id, n, attempt, task_id)

    def _record(self, run_id: str, n: int, intent: Intent, task_id: str) -> str:
        """Record ``task_id`` as batch ``n``'s task, mark its files, forget the intent."""
        sub = Submission(
            task_id, intent.model, run_id, n, intent.parameters, intent.at, intent.files
        )
        self.store.record(
            sub, sub.submitted_at + self.settings.reconcile_after_seconds, intent.prints
        )
        self.intents.clear(run_id, n)
        for entry in intent.files:
            self.store.set_file(run_id, entry.path, FileState("submitted", task_id, key=entry.key))
        log.info(
            "batch_submitted", run_id=run_id, batch=n, task_id=task_id, files=len(intent.files)
        )
        return task_id

    def _query_limiter(self) -> RateLimiter:
        return query_limiter(self.redis_client, self.settings.dashscope_query_qps)

    def _take_submit_token(self, model: str, timeout_s: float = RATE_WAIT_S) -> None:
        """Book the family's next submission turn and sleep until it (``SUBMIT_RATES``)."""
        rate = self.settings.submit_rate_by_family.get(family_of(model), 1.0)
        submit_limiter(self.redis_client, family_of(model), rate).acquire(timeout_s=timeout_s)

    def _mark_submitted(self, run_id: str, task_id: str) -> None:
        """Set every file of recorded task ``task_id`` to ``submitted`` (idempotent)."""
        sub = self.store.load(task_id)
        for entry in sub.files if sub is not None else []:
            self.store.set_file(run_id, entry.path, FileState("submitted", task_id, key=entry.key))

    def resubmit(self, task_id: str, output: dict[str, Any]) -> list[str]:
        """Submit once more the files that failed in ``task_id`` (its query ``output``).

        Returns the new task ids (empty when nothing failed). Raises :class:`PermanentError`
        (``not_ours``, ``already_resubmitted``) when the task is unknown or was resubmitted.
        """
        sub = self.store.load(task_id)
        if sub is None:
            raise PermanentError(f"task {task_id} was not submitted here", reason=Reason.NOT_OURS)
        failed = subtask_failures(output, sub.files)
        retry = [entry for entry in sub.files if entry.key in failed]
        if not retry:
            return []
        if not self.store.claim_resubmit(task_id):
            raise PermanentError(
                f"task {task_id} was resubmitted before", reason=Reason.ALREADY_RESUBMITTED
            )
        new_ids = []
        for batch in plan_batches(retry, sub.model, self.settings.submit_batch_size):
            new_id = self._submit(sub.model, sub.parameters, batch)
            new = Submission(
                new_id,
                sub.model,
                "",
                sub.batch,
                sub.parameters,
                time.time(),
                batch,
                resubmit_of=task_id,
            )
            self.store.record(new, new.submitted_at + self.settings.reconcile_after_seconds, [])
            new_ids.append(new_id)
        return new_ids

    def _upload_all(self, run_id: str, files: list[LocalMedia]) -> list[FileEntry]:
        with ThreadPoolExecutor(max_workers=self.settings.upload_threads) as pool:
            results = list(pool.map(lambda m: self._upload_one(run_id, m), files))
        return [entry for entry in results if entry is not None]

    def _upload_one(self, run_id: str, media: LocalMedia) -> FileEntry | None:
        try:
            sha = sha256_of(media.path)
        except OSError as exc:
            self.store.set_file(run_id, media.path, FileState("failed", reason=Reason.UNREADABLE))
            log.warning("media_unreadable", path=media.path, error=type(exc).__name__)
            return None
        key = self.media.object_key(sha, media.path)
        try:
            sent = self.media.upload(media.path, key, media.size)
        except PermanentError as exc:
            self.store.set_file(run_id, media.path, FileState("failed", reason=exc.reason))
            return None
        state = FileState("uploaded" if sent else "present", key=key)
        self.store.set_file(run_id, media.path, state)
        return FileEntry(media.path, key, media.size, sha)

    def _drop_duplicates(
        self,
        run_id: str,
        model: str,
        parameters: dict[str, Any],
        entries: list[FileEntry],
        force: int,
    ) -> tuple[list[FileEntry], list[str]]:
        fresh, prints = [], []
        for entry in entries:
            fp = fingerprint(model, parameters, entry.sha256)
            earlier = None if force else self.store.previous(fp)
            if earlier is not None:
                state = FileState("duplicate", earlier, key=entry.key)
                self.store.set_file(run_id, entry.path, state)
                continue
            fresh.append(entry)
            prints.append(fp)
        return fresh, prints

    def _submit(self, model: str, parameters: dict[str, Any], files: list[FileEntry]) -> str:
        self._take_submit_token(model)
        urls = [self.media.sign(entry.key) for entry in files]
        pace = partial(self._take_submit_token, model, RETRY_RATE_WAIT_S)
        return self.client.submit(model, urls, parameters, pace=pace)
