"""Queue and task names: the only things that cross the broker besides plain JSON arguments.

Queues ``archive`` and ``submit`` are part of the outside contract (`docs/contract.md`).
Task names are explicit so a webhook can publish by name without importing task code.
"""

from __future__ import annotations

ARCHIVE_QUEUE = "archive"
SUBMIT_QUEUE = "submit"

ARCHIVE_TASK = "asr_ingest.archive"
"""Archive one finished task; one argument, the DashScope ``task_id`` (str)."""

SUBMIT_BATCH_TASK = "asr_ingest.submit_batch"
"""Upload and submit one planned batch; arguments: the run id (str), the batch number (int)."""

RECONCILE_TASK = "asr_ingest.reconcile"
"""Archive submitted tasks whose completion event never came; no arguments (beat)."""

ARCHIVE_SWEEP_TASK = "asr_ingest.archive_sweep"
"""Re-enqueue receipts that never reached the broker and stuck archiving; no arguments (beat)."""

NOTIFY_TASK = "asr_ingest.notify"
"""Announce one archived task to ``NOTIFY_URL``; one argument, the ``task_id`` (str)."""
