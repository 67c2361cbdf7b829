"""asr-ingest worker: the Celery app and the domain (archiving, submission, reconciliation)."""

from __future__ import annotations

from worker.app import AsrCelery, create_celery

__all__ = ["AsrCelery", "create_celery"]
