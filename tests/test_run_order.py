"""``asr-ingest run`` plans every model's run first, then enqueues all batches interleaved."""

from __future__ import annotations

import base64
import json
import wave
from pathlib import Path

import redis

from asr_ingest.run import interleaved, submit_round_robin
from asr_ingest.submit_cmd import SubmitReport
from core.queues import SUBMIT_QUEUE
from core.settings import load_settings_from


def _report(run_id: str, batches: int) -> SubmitReport:
    return SubmitReport(run_id, "fun-asr", batches, batches, [])


def test_each_run_is_spread_evenly_over_the_queue() -> None:
    """Batch n of a run of B batches sits at fraction (n + 0.5) / B of the queue, ties by run."""
    order = interleaved([_report("big", 2), _report("one", 1), _report("many", 8)])
    assert order == [
        ("many", 0), ("many", 1), ("big", 0), ("many", 2), ("many", 3),
        ("one", 0), ("many", 4), ("many", 5), ("big", 1), ("many", 6), ("many", 7),
    ]  # fmt: skip


def test_the_run_with_most_batches_leads_and_small_runs_are_not_bunched() -> None:
    """333 one-file tasks lead; four large batches each come after a quarter of the queue."""
    order = interleaved([_report("fun", 4), _report("qwen", 333)])
    assert order[0] == ("qwen", 0)
    positions = [i for i, (run_id, _) in enumerate(order) if run_id == "fun"]
    assert [round(p / len(order), 2) for p in positions] == [0.12, 0.37, 0.62, 0.87]


def test_round_robin_enqueues_the_interleaved_order(tmp_path: Path, redis_url: str) -> None:
    """The submit queue in Redis holds every planned batch once, in the interleaved order."""
    media = tmp_path / "media"
    media.mkdir()
    for n in range(9):
        with wave.open(str(media / f"r{n}.wav"), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(n.to_bytes(2, "little") * 800)
    settings = load_settings_from({"REDIS_URL": redis_url, "SUBMIT_BATCH_SIZE": "2"})
    models = ["fun-asr", "qwen3-asr-flash-filetrans"]
    reports = submit_round_robin(settings, [str(media)], models, {}, force=False)
    assert [(r.accepted, r.batches) for r in reports] == [(5, 3), (4, 4)]
    client = redis.Redis.from_url(redis_url)
    queued = [json.loads(raw) for raw in reversed(client.lrange(SUBMIT_QUEUE, 0, -1))]
    args = [tuple(json.loads(base64.b64decode(m["body"]))[0]) for m in queued]
    assert args == [tuple(pair) for pair in interleaved(reports)]
    assert sorted(args) == sorted((r.run_id, n) for r in reports for n in range(r.batches))
