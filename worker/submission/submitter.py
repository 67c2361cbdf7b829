"""The submitter's core, free of Celery: upload a planned batch, sign, pace, submit, record.

A run's plan (batches of local files) is stored by :class:`SubmissionStore.create_run`; each
batch is one call of :meth:`Submitter.submit_batch`, which is safe to repeat: uploads skip
objects already in the bucket and a batch submitted once is never submitted again.
Submissions are paced per model family by the shared Redis token bucket
(:func:`worker.ratelimit.submit_limiter`, ``SUBMIT_RATES``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from core.errors import PermanentError, Reason
from core.models import family_of
from core.settings import Settings
from worker.dashscope import DashScopeClient
from worker.ratelimit import submit_limiter
from worker.submission.batching import fingerprint, plan_batches
from worker.submission.media import LocalMedia, MediaBucket, key_in_url, sha256_of
from worker.submission.submissions import FileEntry, FileState, Submission, SubmissionStore

log = structlog.get_logger(__name__)

RATE_WAIT_S = 120.0
"""Longest wait for a submission token before the batch is retried later."""


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

    def submit_batch(self, run_id: str, n: int) -> str | None:
        """Upload, sign and submit batch ``n`` of ``run_id``; its task id, or None if nothing new.

        Raises :class:`core.errors.TransientError` (retry later) or
        :class:`core.errors.PermanentError` (the batch's files are failed).
        """
        done = self.store.batch_task(run_id, n)
        info = self.store.run_info(run_id)
        if done is not None:
            self._mark_submitted(run_id, done)  # a crash may have come between record and marks
            return done
        if info is None:
            return None
        entries = self._upload_all(run_id, self.store.batch(run_id, n))
        model, parameters = info["model"], info["parameters"]
        fresh, prints = self._drop_duplicates(run_id, model, parameters, entries, info["force"])
        if not fresh:
            return None
        task_id = self._submit(model, parameters, fresh)
        sub = Submission(task_id, model, run_id, n, parameters, time.time(), fresh)
        self.store.record(sub, sub.submitted_at + self.settings.reconcile_after_seconds, prints)
        for entry in fresh:
            self.store.set_file(run_id, entry.path, FileState("submitted", task_id, key=entry.key))
        log.info("batch_submitted", run_id=run_id, batch=n, task_id=task_id, files=len(fresh))
        return task_id

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
        rate = self.settings.submit_rate_by_family.get(family_of(model), 1.0)
        submit_limiter(self.redis_client, family_of(model), rate).acquire(timeout_s=RATE_WAIT_S)
        urls = [self.media.sign(entry.key) for entry in files]
        return self.client.submit(model, urls, parameters)
