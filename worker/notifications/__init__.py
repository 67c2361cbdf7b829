"""Announcements of archived tasks to ``NOTIFY_URL``, signed per Standard Webhooks.

:mod:`.payload` builds the announcement from a task's manifest, :mod:`.sender` signs and posts
it, :mod:`.tasks` is the Celery adapter (retry with backoff, then a dead letter). The archive
task enqueues ``asr_ingest.notify(task_id)`` by name once a manifest exists, so archiving does
not import this package.
"""
