"""The announcement of one archived task (`docs/contract.md`, "Notifications").

Body::

    {"type": "transcription.archived", "timestamp": "<ISO 8601 UTC>",
     "data": {"task_id", "model", "task_status", "archive_status",
              "manifest": ["<destination URL>/<task_id>/manifest.json", ...],
              "files": [{"index", "subtask_status", "source_path", "keys": [...], "error"}]}}

``keys`` are the file's result object under every destination (URLs, like ``manifest``);
``source_path`` is the local media path when asr-ingest submitted the file (the manifest's
``files[].media.path``), else null; ``error`` is our failure reason or null.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.archiving import manifest as mf

EVENT_TYPE = "transcription.archived"


def webhook_id(task_id: str) -> str:
    """The stable ``webhook-id`` of ``task_id``'s announcement: receivers deduplicate on it."""
    return f"msg_asr_{task_id}"


def _url(destination: str, key: str) -> str:
    return destination.rstrip("/") + "/" + key


def _file(entry: dict[str, Any], destinations: Sequence[str]) -> dict[str, Any]:
    key = entry.get("key")
    media = entry.get("media")
    error = entry.get("error")
    return {
        "index": entry.get("index"),
        "subtask_status": entry.get("subtask_status"),
        "source_path": media.get("path") if isinstance(media, dict) else None,
        "keys": [_url(d, str(key)) for d in destinations] if key else [],
        "error": error.get("reason") if isinstance(error, dict) else None,
    }


def announcement(
    manifest: mf.Manifest, destinations: Sequence[str], timestamp: str
) -> dict[str, Any]:
    """The body announcing ``manifest``'s task; ``destinations`` are the ``ARCHIVE_URLS``."""
    task_id = str(manifest["task_id"])
    return {
        "type": EVENT_TYPE,
        "timestamp": timestamp,
        "data": {
            "task_id": task_id,
            "model": manifest.get("model"),
            "task_status": manifest.get("task_status"),
            "archive_status": manifest.get("archive_status"),
            "manifest": [_url(d, mf.manifest_key(task_id)) for d in destinations],
            "files": [_file(entry, destinations) for entry in mf.file_entries(manifest)],
        },
    }
