"""Submission records in Redis: runs, file states, task ↔ file indexes, reconcile schedule."""

from __future__ import annotations

import redis

from core.media import Media, read_media
from worker.submission.media import LocalMedia, Rejection
from worker.submission.submissions import FileEntry, FileState, Submission, SubmissionStore


def _store(client: redis.Redis) -> SubmissionStore:
    return SubmissionStore(client, ttl_seconds=3600)


def test_run_plan_and_file_states(redis_client: redis.Redis) -> None:
    """A run stores its batches and rejections; state changes are counted per state."""
    store = _store(redis_client)
    batches = [[LocalMedia("/m/a.wav", 10), LocalMedia("/m/b.wav", 20)], [LocalMedia("/m/c", 5)]]
    run_id = store.create_run("fun-asr", {"x": 1}, batches, [Rejection("/m/d.txt", "bad")])
    assert store.batch(run_id, 1) == [LocalMedia("/m/c", 5)]
    assert store.batch(run_id, 9) == []
    store.set_file(run_id, "/m/a.wav", FileState("uploaded", key="k"))
    store.set_file(run_id, "/m/a.wav", FileState("submitted", "t-1", key="k"))
    info = store.run_info(run_id)
    assert info is not None
    assert (info["model"], info["parameters"], info["batches"], info["files"]) == (
        "fun-asr",
        {"x": 1},
        2,
        4,
    )
    assert (info["uploaded"], info["submitted"], info["failed"], info["force"]) == (1, 1, 0, 0)
    states = store.file_states(run_id)
    assert states["/m/a.wav"] == FileState("submitted", "t-1", key="k")
    assert states["/m/b.wav"].state == "planned"
    assert states["/m/d.txt"] == FileState("rejected", reason="bad")
    assert store.run_info("missing") is None


def test_fail_batch_fails_only_unsettled_files(redis_client: redis.Redis) -> None:
    """fail_batch marks planned/uploaded files failed and leaves submitted ones alone."""
    store = _store(redis_client)
    run_id = store.create_run("fun-asr", {}, [[LocalMedia("/a", 1), LocalMedia("/b", 1)]], [])
    store.set_file(run_id, "/a", FileState("submitted", "t-1"))
    store.fail_batch(run_id, 0, "media_unavailable")
    states = store.file_states(run_id)
    assert states["/a"].state == "submitted"
    assert states["/b"] == FileState("failed", reason="media_unavailable")


def test_record_indexes_task_file_content_and_schedule(redis_client: redis.Redis) -> None:
    """A recorded task is found by id, by file path and by fingerprint, and becomes due."""
    store = _store(redis_client)
    entry = FileEntry("/m/a.wav", "media/abc.wav", 10, "abc")
    sub = Submission("t-1", "paraformer-v2", "run-1", 3, {"k": "v"}, 1000.0, [entry])
    store.record(sub, due_at=1600.0, fingerprints=["fp-1"])
    assert store.load("t-1") == sub
    assert store.task_for_file("/m/a.wav") == "t-1"
    assert store.previous("fp-1") == "t-1"
    assert store.previous("fp-2") is None
    assert store.batch_task("run-1", 3) == "t-1"
    assert store.due(now=1599.0) == []
    assert store.due(now=1600.0) == ["t-1"]
    store.reschedule("t-1", 2000.0)
    assert store.due(now=1999.0) == [] and store.is_due("t-1")
    store.settle("t-1")
    assert store.due(now=9e9) == [] and not store.is_due("t-1")


def test_resubmit_is_claimed_once(redis_client: redis.Redis) -> None:
    """Only the first claim to resubmit a task succeeds."""
    store = _store(redis_client)
    assert store.claim_resubmit("t-1") is True
    assert store.claim_resubmit("t-1") is False


def test_records_expire(redis_client: redis.Redis) -> None:
    """Task records and run records carry the configured TTL."""
    store = _store(redis_client)
    run_id = store.create_run("fun-asr", {}, [[LocalMedia("/a", 1)]], [])
    store.record(Submission("t-9", "fun-asr", run_id, 0, {}, 1.0, []), 2.0, [])
    assert 0 < redis_client.ttl("asr:submission:t-9") <= 3600
    assert 0 < redis_client.ttl(f"asr:run:{run_id}") <= 3600


def test_take_due_claims_a_due_task_once(redis_client: redis.Redis) -> None:
    """Of two claims on one due task only the first wins; a task not yet due is not taken."""
    store = _store(redis_client)
    store.record(Submission("t-1", "fun-asr", "", 0, {}, 1.0, []), 100.0, [])
    assert store.take_due("t-1", now=50.0, next_due=110.0) is False
    assert store.take_due("t-1", now=100.0, next_due=160.0) is True
    assert store.take_due("t-1", now=100.0, next_due=160.0) is False
    assert store.due(now=159.0) == [] and store.due(now=160.0) == ["t-1"]
    assert store.take_due("gone", now=1e9, next_due=2e9) is False


def test_record_writes_the_media_index(redis_client: redis.Redis) -> None:
    """A recorded task's files are indexed by object key with their local media."""
    entries = [
        FileEntry("/m/a.wav", "u/a.wav", 10, "aa" * 32),
        FileEntry("/m/b.wav", "u/b.wav", 20, "bb" * 32),
    ]
    store = SubmissionStore(redis_client, 3600)
    store.record(Submission("t-media", "fun-asr", "", 0, {}, 1.0, entries), 601.0, [])
    assert read_media(redis_client, "t-media") == {
        "u/a.wav": Media("/m/a.wav", "aa" * 32, 10),
        "u/b.wav": Media("/m/b.wav", "bb" * 32, 20),
    }
