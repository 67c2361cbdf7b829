"""Where each local file stands: run records, receipts and archive manifests, read together.

A file of a run is final when it was rejected or failed before submission, or when its task's
receipt is ``archived`` or ``dead``. The per-file result of an archived task comes from the
task's ``manifest.json`` in the first ``ARCHIVE_URLS`` destination (`docs/contract.md`,
"Archive layout": ``files[]`` with ``file_url`` (query removed), ``subtask_status``, ``key``,
``code``, ``message``), matched to our object keys through the URL path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from core.redis_client import connect
from core.settings import Settings
from core.store import ReceiptStore
from worker.archiving import manifest as mf
from worker.archiving.destinations import open_destinations
from worker.ratelimit import query_limiter
from worker.submission.media import key_in_url
from worker.submission.submissions import FileState, Submission, SubmissionStore
from worker.submission.submitter import Submitter

FINAL_RECEIPT_STATES = frozenset({"archived", "dead"})


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """Where one local file stands.

    ``status`` is ``succeeded``, ``failed``, ``rejected``, ``duplicate`` (taken by an earlier
    task whose outcome is not known here) or ``pending``; ``uploaded`` and ``submitted`` feed
    the progress bars.
    """

    path: str
    status: str
    task_id: str = ""
    reason: str = ""
    uploaded: bool = False
    submitted: bool = False
    archive_key: str = ""

    @property
    def final(self) -> bool:
        """True unless the file is still ``pending``."""
        return self.status != "pending"


TaskResults = dict[str, tuple[bool, str, str]]
"""Object key → (succeeded, reason, archive key) for every file of a task."""


def manifest_results(manifest: mf.Manifest, sub: Submission) -> TaskResults:
    """Object key → (succeeded, reason, archive key) for every file of ``sub``, from ``manifest``.

    The archive key is the manifest entry's ``key`` (the result object, relative to the
    destination's prefix), "" when nothing was archived. A file missing from the manifest's
    ``files`` failed with the task (:func:`worker.archiving.manifest.failure_reason`).
    """
    keys = [entry.key for entry in sub.files]
    entries = mf.file_entries(manifest)
    results: TaskResults = {}
    for entry in entries:
        key = key_in_url(str(entry.get("file_url") or ""), keys)
        if key is None and len(keys) == 1 and len(entries) == 1:
            key = keys[0]  # single-file families may not echo file_url
        if key is not None:
            ok = mf.entry_archived(entry)
            archive_key = str(entry.get("key") or "")
            results[key] = (ok, "" if ok else mf.failure_reason(entry, manifest), archive_key)
    for key in keys:
        results.setdefault(key, (False, mf.failure_reason({}, manifest), ""))  # task-level
    return results


class OutcomeReader:
    """Reads file outcomes of a run, once per task per :meth:`run` call.

    Finished tasks' results (archived manifests) are kept for the reader's life; reuse one
    reader while polling.
    """

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.submissions = SubmissionStore(client, settings.submission_ttl_seconds)
        self.receipts = ReceiptStore(client, settings.dedupe_ttl_seconds)
        self._settings = settings
        self._final: dict[str, TaskResults | str] = {}
        self._unsettled: dict[str, bool] = {}

    def run(self, run_id: str) -> list[FileOutcome]:
        """Every file of ``run_id`` (empty when the run is unknown)."""
        self._unsettled.clear()
        states = self.submissions.file_states(run_id)
        return [self.file(path, state) for path, state in states.items()]

    def file(self, path: str, state: FileState) -> FileOutcome:
        """The outcome of one file in ``state``."""
        if state.state in ("rejected", "failed"):
            return FileOutcome(path, state.state, state.task_id, state.reason)
        if state.state not in ("submitted", "duplicate"):
            return FileOutcome(path, "pending", uploaded=state.state != "planned")
        task = self._task(state.task_id)
        base = FileOutcome(path, "pending", state.task_id, uploaded=True, submitted=True)
        if task is None:
            if state.state == "duplicate" and self._settled(state.task_id):
                return FileOutcome(path, "duplicate", state.task_id, "", True, True)
            return base
        if isinstance(task, str):
            return FileOutcome(path, "failed", state.task_id, task, True, True)
        ok, reason, archive_key = task.get(state.key, (False, "not_in_task", ""))
        status = "succeeded" if ok else "failed"
        return FileOutcome(path, status, state.task_id, reason, True, True, archive_key)

    def _settled(self, task_id: str) -> bool:
        return not self.submissions.is_due(task_id)

    def _task(self, task_id: str) -> TaskResults | str | None:
        if task_id in self._unsettled:
            return None
        result = self._load_task(task_id)
        if result is None:
            self._unsettled[task_id] = True
        return result

    def _load_task(self, task_id: str) -> TaskResults | str | None:
        """Key → result for an archived task, a reason for a dead one, None while unsettled."""
        if task_id in self._final:
            return self._final[task_id]
        receipt = self.receipts.load(task_id)
        sub = self.submissions.load(task_id)
        if receipt is None or sub is None or receipt.state not in FINAL_RECEIPT_STATES:
            return None
        raw = open_destinations(self._settings)[0].get_bytes(mf.manifest_key(task_id))
        result: TaskResults | str = "archive_failed"
        if raw is not None:
            result = manifest_results(mf.decode(raw), sub)
        self._final[task_id] = result
        return result


def task_status(
    client: redis.Redis, settings: Settings, task_or_file: str
) -> dict[str, Any] | None:
    """A task we submitted, by task id or by a local file path it took; None when unknown.

    Keys: ``task_id``, ``model``, ``state`` (receipt state, or ``submitted`` before any event),
    ``source``, ``submitted_at`` (ISO 8601 UTC), ``resubmit_of``, ``files`` (FileOutcome list).
    """
    reader = OutcomeReader(client, settings)
    sub = reader.submissions.load(task_or_file)
    if sub is None:
        task_id = reader.submissions.task_for_file(str(Path(task_or_file).resolve()))
        sub = reader.submissions.load(task_id) if task_id else None
    if sub is None:
        return None
    receipt = reader.receipts.load(sub.task_id)
    files = [reader.file(e.path, FileState("submitted", sub.task_id, key=e.key)) for e in sub.files]
    return {
        "task_id": sub.task_id,
        "model": sub.model,
        "state": receipt.state if receipt else "submitted",
        "source": receipt.source if receipt else "",
        "submitted_at": datetime.fromtimestamp(sub.submitted_at, UTC).isoformat(),
        "resubmit_of": sub.resubmit_of,
        "files": files,
    }


def _stored_output(body: bytes) -> dict[str, Any] | None:
    """``data.output_result.output`` of a stored event, when it carries one."""
    data = json.loads(body).get("data") or {}
    output = (data.get("output_result") or {}).get("output")
    return output if isinstance(output, dict) else None


def resubmit_task(settings: Settings, task_id: str) -> list[str]:
    """Submit the FAILED files of ``task_id`` once more; the new task ids.

    The task's output comes from its stored receipt, else one query through the shared query
    budget. Raises :class:`core.errors.PermanentError` (``not_ours``,
    ``already_resubmitted``) and :class:`core.errors.TransientError`.
    """
    client = connect(settings.redis_url)
    try:
        submitter = Submitter.from_settings(settings, client)
        receipt = ReceiptStore(client, settings.dedupe_ttl_seconds).load(task_id)
        output = _stored_output(receipt.body) if receipt is not None else None
        if not output:
            query_limiter(client, settings.dashscope_query_qps).acquire()
            output = submitter.client.query(task_id).get("output") or {}
        return submitter.resubmit(task_id, output)
    finally:
        client.close()
