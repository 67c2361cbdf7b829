"""What we submitted, kept in Redis: task → files, file → task, runs and their progress.

Keys (``asr:`` prefix; each expires after ``SUBMISSION_TTL_SECONDS``)::

    asr:submission:<task_id>           JSON of a Submission (model, run, batch, files, time)
    asr:submission:file:<abs path>     task_id that last took this local file
    asr:submission:content:<fp>        task_id for fingerprint(model, parameters, sha256)
    asr:submissions:due                sorted set task_id → when reconciliation checks it (s)
    asr:run:<run_id>                   hash: model, parameters, created_at, batches, files,
                                       and counters uploaded, present, submitted, duplicate, failed
    asr:run:<run_id>:batch:<n>         JSON [[path, size], ...]: the planned batch n
    asr:run:<run_id>:batch:<n>:task    task_id once batch n is submitted (redelivery guard)
    asr:run:<run_id>:files             hash path → JSON {"state", "task_id", "reason"}

File states in a run: ``planned`` → ``uploaded`` | ``present`` (already in the bucket) →
``submitted`` | ``duplicate`` (same content, model and parameters submitted before: no new
task) | ``failed``; ``rejected`` files never leave that state.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis
from redis.typing import EncodableT

from core.media import Media, write_media
from worker.submission.media import LocalMedia, Rejection

DUE_KEY = "asr:submissions:due"
_TASK = "asr:submission:{}"
_FILE = "asr:submission:file:{}"
_CONTENT = "asr:submission:content:{}"
_RUN = "asr:run:{}"
COUNTERS = ("uploaded", "present", "submitted", "duplicate", "failed")
UNSETTLED = frozenset({"planned", "uploaded", "present"})

# KEYS[1] due set; ARGV: task_id, now, next due time. 1 when the task was due and is now ours.
_TAKE_DUE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One submitted file: local ``path``, object ``key``, ``size`` in bytes, hex ``sha256``."""

    path: str
    key: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Submission:
    """One DashScope task we created; ``submitted_at`` in seconds since the epoch."""

    task_id: str
    model: str
    run_id: str
    batch: int
    parameters: dict[str, Any]
    submitted_at: float
    files: list[FileEntry] = field(default_factory=list)
    resubmit_of: str = ""

    @classmethod
    def from_json(cls, raw: bytes | str) -> Submission:
        """Inverse of ``json.dumps(asdict(submission))``."""
        data = json.loads(raw)
        data["files"] = [FileEntry(**entry) for entry in data.get("files", [])]
        return cls(**data)


@dataclass(frozen=True, slots=True)
class FileState:
    """A file's state in a run (see the module docstring); ``key`` is its object key once known.

    ``task_id``, ``reason`` and ``key`` may be "".
    """

    state: str
    task_id: str = ""
    reason: str = ""
    key: str = ""


class SubmissionStore:
    """Read and write submission records; Redis errors propagate as :class:`redis.RedisError`."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._take_due = client.register_script(_TAKE_DUE)

    def create_run(
        self,
        model: str,
        parameters: dict[str, Any],
        batches: list[list[LocalMedia]],
        rejected: list[Rejection],
        *,
        force: bool = False,
    ) -> str:
        """Store a run's plan (batches of files) and rejections; return the new run id.

        ``force`` submits content again even when it was submitted before.
        """
        run_id = uuid.uuid4().hex
        key = _RUN.format(run_id)
        info: dict[EncodableT, EncodableT] = {
            "model": model,
            "parameters": json.dumps(parameters),
            "created_at": time.time(),
            "batches": len(batches),
            "files": sum(map(len, batches)) + len(rejected),
            "force": int(force),
        }
        pipe = self._redis.pipeline(transaction=False)
        info.update(dict.fromkeys(COUNTERS, 0))
        pipe.hset(key, mapping=info)
        for n, batch in enumerate(batches):
            pipe.set(
                f"{key}:batch:{n}", json.dumps([[m.path, m.size] for m in batch]), ex=self._ttl
            )
        states: dict[EncodableT, EncodableT] = {
            m.path: json.dumps({"state": "planned"}) for b in batches for m in b
        }
        states |= {r.path: json.dumps({"state": "rejected", "reason": r.reason}) for r in rejected}
        if states:
            pipe.hset(f"{key}:files", mapping=states)
        pipe.expire(key, self._ttl)
        pipe.expire(f"{key}:files", self._ttl)
        pipe.execute()
        return run_id

    def run_info(self, run_id: str) -> dict[str, Any] | None:
        """The run hash decoded (``parameters`` a dict, counts int, ``force`` 0/1), or None."""
        raw = cast("dict[bytes, bytes]", self._redis.hgetall(_RUN.format(run_id)))
        if not raw:
            return None
        info: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
        info["parameters"] = json.loads(info["parameters"])
        info["created_at"] = float(info["created_at"])
        for name in ("batches", "files", "force", *COUNTERS):
            info[name] = int(info[name])
        return info

    def batch(self, run_id: str, n: int) -> list[LocalMedia]:
        """The files planned for batch ``n`` of ``run_id`` (empty when unknown or expired)."""
        raw = self._redis.get(f"{_RUN.format(run_id)}:batch:{n}")
        return [LocalMedia(path, size) for path, size in json.loads(raw)] if raw else []

    def set_file(self, run_id: str, path: str, state: FileState) -> None:
        """Record a file's new state in the run and count it."""
        key = _RUN.format(run_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(f"{key}:files", path, json.dumps(asdict(state)))
        if state.state in COUNTERS:
            pipe.hincrby(key, state.state, 1)
        pipe.execute()

    def fail_batch(self, run_id: str, n: int, reason: str) -> None:
        """Mark every unsettled file of batch ``n`` (planned, uploaded, present) as failed."""
        states = self.file_states(run_id)
        for media in self.batch(run_id, n):
            if states.get(media.path, FileState("planned")).state in UNSETTLED:
                self.set_file(run_id, media.path, FileState("failed", reason=reason))

    def file_states(self, run_id: str) -> dict[str, FileState]:
        """Every file of the run (accepted and rejected) with its state."""
        raw = cast("dict[bytes, bytes]", self._redis.hgetall(f"{_RUN.format(run_id)}:files"))
        return {k.decode(): FileState(**json.loads(v)) for k, v in raw.items()}

    def batch_task(self, run_id: str, n: int) -> str | None:
        """The task id batch ``n`` was submitted as, or None when not submitted yet."""
        raw = self._redis.get(f"{_RUN.format(run_id)}:batch:{n}:task")
        return raw.decode() if isinstance(raw, bytes) else None

    def record(self, sub: Submission, due_at: float, fingerprints: list[str]) -> None:
        """Store a new task: its record, the file and content indexes, its reconcile time."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(_TASK.format(sub.task_id), json.dumps(asdict(sub)), ex=self._ttl)
        for entry in sub.files:
            pipe.set(_FILE.format(entry.path), sub.task_id, ex=self._ttl)
        for fp in fingerprints:
            pipe.set(_CONTENT.format(fp), sub.task_id, ex=self._ttl)
        if sub.run_id:
            pipe.set(f"{_RUN.format(sub.run_id)}:batch:{sub.batch}:task", sub.task_id, ex=self._ttl)
        pipe.zadd(DUE_KEY, {sub.task_id: due_at})
        media = {e.key: Media(e.path, e.sha256, e.size) for e in sub.files}
        write_media(pipe, sub.task_id, media, self._ttl)
        pipe.execute()

    def load(self, task_id: str) -> Submission | None:
        """The record of ``task_id``, or None when we did not submit it (or it expired)."""
        raw = self._redis.get(_TASK.format(task_id))
        return Submission.from_json(cast("bytes", raw)) if raw else None

    def task_for_file(self, path: str) -> str | None:
        """The task that last took the local file ``path`` (absolute), or None."""
        raw = self._redis.get(_FILE.format(path))
        return raw.decode() if isinstance(raw, bytes) else None

    def previous(self, fp: str) -> str | None:
        """The task that already took content fingerprint ``fp``, or None."""
        raw = self._redis.get(_CONTENT.format(fp))
        return raw.decode() if isinstance(raw, bytes) else None

    def due(self, now: float, limit: int = 100) -> list[str]:
        """Up to ``limit`` task ids whose reconcile time is at or before ``now``, oldest first."""
        members = self._redis.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=limit)
        return [m.decode() for m in cast("list[bytes]", members)]

    def take_due(self, task_id: str, now: float, next_due: float) -> bool:
        """Atomically claim a due task for one check, moving its time to ``next_due``.

        False when it is not due (any more): another sweep took it, or it was settled.
        """
        return bool(self._take_due(keys=[DUE_KEY], args=[task_id, repr(now), repr(next_due)]))

    def reschedule(self, task_id: str, due_at: float) -> None:
        """Check ``task_id`` again at ``due_at`` (seconds since the epoch)."""
        self._redis.zadd(DUE_KEY, {task_id: due_at})

    def is_due(self, task_id: str) -> bool:
        """True while reconciliation still watches ``task_id``."""
        return self._redis.zscore(DUE_KEY, task_id) is not None

    def settle(self, task_id: str) -> None:
        """Stop reconciling ``task_id`` (its event arrived, or it was reconciled)."""
        self._redis.zrem(DUE_KEY, task_id)

    def claim_resubmit(self, task_id: str) -> bool:
        """Mark ``task_id`` as resubmitted; False when it already was (resubmit happens once)."""
        key = _TASK.format(task_id) + ":resubmitted"
        return bool(self._redis.set(key, str(time.time()), nx=True, ex=self._ttl))
