"""The archive layout and the manifest: object keys, fields, and reading a manifest back.

Layout under each destination's prefix (`docs/contract.md`, "Archive layout")::

    <task_id>/event.json           the event, query strings of all URLs removed
    <task_id>/results/<nnnn>.json  file n's result, byte for byte as served
    <task_id>/manifest.json        written last: its presence means "fully archived"

A manifest is a JSON object (``manifest.json``, UTF-8, indented) with the contract's fields:
``task_id``, ``model``, ``task_status``, ``event_id``, ``event_sha256`` (of the raw delivered
body), ``source``, ``received_at``/``archived_at`` (ISO 8601 UTC, ``Z``), ``files`` (one
:func:`file_record` per result), ``code``/``message`` (DashScope's task-level failure),
``archive_status`` (``complete``, ``partial`` or ``failed``) and ``archive_error`` (our
task-level failure ``{"reason", "message"}``, or null). This module is the only place that
spells these names; readers use :func:`file_entries` and :func:`failure_reason`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

from core.errors import PipelineError
from core.events import ResultEntry
from core.media import Media
from core.store import Receipt

ArchiveStatus = Literal["complete", "partial", "failed"]
Manifest = dict[str, Any]
"""A manifest document as written (JSON object)."""


def event_key(task_id: str) -> str:
    """Object key of the redacted event: ``<task_id>/event.json``."""
    return f"{task_id}/event.json"


def result_key(task_id: str, index: int) -> str:
    """Object key of file ``index``'s result: ``<task_id>/results/<nnnn>.json`` (4 digits)."""
    return f"{task_id}/results/{index:04d}.json"


def manifest_key(task_id: str) -> str:
    """Object key of the manifest: ``<task_id>/manifest.json``."""
    return f"{task_id}/manifest.json"


def iso(epoch_s: float) -> str:
    """``epoch_s`` (seconds) as ISO 8601 UTC with a ``Z`` suffix."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


def error_record(exc: PipelineError) -> dict[str, str]:
    """The ``error``/``archive_error`` field for ``exc``: ``{"reason", "message"}``."""
    return {"reason": str(exc.reason), "message": str(exc)}


def file_record(entry: ResultEntry, media: Media | None = None) -> dict[str, Any]:
    """The manifest entry of one result file before it is archived (``key`` etc. null);
    ``media`` is the local recording it came from (:mod:`core.media`), null when unknown."""
    return {
        "index": entry.index,
        "file_url": entry.file_url,
        "subtask_status": entry.subtask_status,
        "key": None,
        "bytes": None,
        "sha256": None,
        "code": entry.code,
        "message": entry.message,
        "error": None,
        "media": media.record() if media is not None else None,
    }


def new_manifest(
    receipt: Receipt, model: str, task_status: str, files: list[dict[str, Any]], now_s: float
) -> Manifest:
    """A manifest for ``receipt``'s task; the caller sets ``archive_status`` and errors."""
    return {
        "task_id": receipt.task_id,
        "model": model,
        "task_status": task_status,
        "event_id": receipt.event_id,
        "event_sha256": hashlib.sha256(receipt.body).hexdigest(),
        "source": receipt.source,
        "received_at": iso(receipt.received_at),
        "archived_at": iso(now_s),
        "files": files,
        "code": None,
        "message": None,
        "archive_status": "complete",
        "archive_error": None,
    }


def failed_manifest(receipt: Receipt, exc: PipelineError, now_s: float) -> Manifest:
    """The manifest of a task that failed as a whole with ``exc`` (no files archived)."""
    manifest = new_manifest(receipt, receipt.model, "UNKNOWN", [], now_s)
    manifest.update(archive_status="failed", archive_error=error_record(exc))
    return manifest


def encode(manifest: Manifest) -> bytes:
    """The bytes of ``manifest.json``."""
    return json.dumps(manifest, ensure_ascii=False, indent=2).encode()


def decode(raw: bytes) -> Manifest:
    """Parse ``manifest.json`` bytes; raises :class:`ValueError` when it is not an object."""
    manifest = json.loads(raw)
    if not isinstance(manifest, dict):
        raise ValueError("manifest.json is not a JSON object")
    return manifest


def file_entries(manifest: Manifest) -> list[dict[str, Any]]:
    """The manifest's ``files`` entries (objects only)."""
    return [entry for entry in manifest.get("files") or [] if isinstance(entry, dict)]


def entry_archived(entry: dict[str, Any]) -> bool:
    """True when the entry's result was archived (it succeeded and has a ``key``)."""
    return entry.get("subtask_status") == "SUCCEEDED" and entry.get("key") is not None


def failure_reason(entry: dict[str, Any], manifest: Manifest) -> str:
    """Why an entry has no archived result: our error's reason, else DashScope's code."""
    for error in (entry.get("error"), manifest.get("archive_error")):
        if isinstance(error, dict) and error.get("reason"):
            return str(error["reason"])
    code, message = entry.get("code") or manifest.get("code"), entry.get("message") or ""
    return f"{code}: {message}" if code else str(entry.get("subtask_status") or "failed")
