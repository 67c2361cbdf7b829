"""Redis memory per receipt and per submitted file, for docs/capacity.md.

Run: ``python tests/benchmarks/redis_memory.py``. It starts an embedded Redis, claims
``--receipts`` receipts the way the webhook does (one Lua script: body, receipt fields, queued
message) and records ``--tasks`` batches of 100 files the way the submitter does (run, task
record, file, content and media indexes, file states), and prints ``used_memory`` deltas.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO_ROOT))

import redis  # noqa: E402

from asr_ingest.embedded import EmbeddedRedis  # noqa: E402  # after sys.path
from core.store import ReceiptStore  # noqa: E402
from tests.support import task_events as te  # noqa: E402
from worker.submission.media import LocalMedia  # noqa: E402
from worker.submission.submissions import (  # noqa: E402
    FileEntry,
    FileState,
    Submission,
    SubmissionStore,
)

RESULT_URL = (
    "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/a/b/c.json"
    "?Expires=1&OSSAccessKeyId=LTAI&Signature=abc"
)
MESSAGE = b"m" * 1100  # about the size of a rendered Celery archive message
FILES_PER_TASK = 100


def used(client: redis.Redis) -> int:
    """Redis ``used_memory``, bytes."""
    return int(client.info("memory")["used_memory"])


def per_receipt(client: redis.Redis, count: int) -> tuple[float, float, int]:
    """Bytes per receipt with its message queued, and after the message is consumed."""
    store = ReceiptStore(client, 172_800)
    body = te.event("x", "fun-asr", te.batch_output("x", [te.ok(RESULT_URL)]))
    base = used(client)
    for _ in range(count):
        task_id = str(uuid.uuid4())
        event = body.replace(b'"x"', f'"{task_id}"'.encode())
        store.claim_enqueued(
            task_id, event, queue_key="archive", message=MESSAGE, event_id=task_id, model="fun-asr"
        )
    queued = (used(client) - base) / count
    client.delete("archive")
    return queued, (used(client) - base) / count, len(body)


def per_file(client: redis.Redis, tasks: int) -> float:
    """Bytes per submitted file, in batches of :data:`FILES_PER_TASK`."""
    store = SubmissionStore(client, 7 * 86_400)
    base = used(client)
    for t in range(tasks):
        paths = [f"/data/recordings/{t:04d}/meeting-{n:03d}.wav" for n in range(FILES_PER_TASK)]
        media = [LocalMedia(path, 10_000_000) for path in paths]
        run_id = store.create_run("fun-asr", {}, [media], [], force=False)
        entries = []
        for path in paths:
            digest = hashlib.sha256(path.encode()).hexdigest()
            entries.append(
                FileEntry(path, f"uploads/{digest[:2]}/{digest}.wav", 10_000_000, digest)
            )
        sub = Submission(str(uuid.uuid4()), "fun-asr", run_id, 0, {}, time.time(), entries)
        store.record(sub, time.time() + 600, [e.sha256 for e in entries])
        for e in entries:
            store.set_file(run_id, e.path, FileState("submitted", sub.task_id, key=e.key))
    return (used(client) - base) / (tasks * FILES_PER_TASK)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=20_000)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        queued, consumed, body = per_receipt(client, args.receipts)
        print(f"event body {body} B: per receipt {queued:.0f} B queued, {consumed:.0f} B after")
        print(f"per submitted file: {per_file(client, args.tasks):.0f} B")


if __name__ == "__main__":
    main()
