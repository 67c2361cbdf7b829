"""Queue and task names: the only things that cross the broker besides plain JSON arguments.

Queues ``archive`` and ``submit`` are part of the outside contract (`docs/contract.md`).
Task names are explicit so a webhook can publish by name without importing task code.
"""

from __future__ import annotations

ARCHIVE_QUEUE = "archive"
SUBMIT_QUEUE = "submit"

ARCHIVE_TASK = "asr_ingest.archive"
"""Archive one finished task; one argument, the DashScope ``task_id`` (str)."""
