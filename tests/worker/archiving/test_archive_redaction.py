"""A result file that echoes our signed media URL is archived without its query string."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import oss2
import pytest
import redis

from core.settings import load_settings
from core.store import ReceiptStore
from sandbox.server import Sandbox
from tests.fixtures.sandbox import SAMPLES_DIR, CallbackReceiver, wait_for
from worker.archiving.archive import Archiver, Progress
from worker.archiving.destinations import open_destination
from worker.archiving.fetch import ResultFetcher
from worker.archiving.scrub import scrub
from worker.dashscope import DashScopeClient


@pytest.mark.parametrize("padding", [0, 2_000_000], ids=["in-memory", "spooled"])
def test_signed_file_url_in_result_is_redacted(
    make_sandbox: Callable[..., Sandbox], callback_receiver: CallbackReceiver,
    oss_bucket: oss2.Bucket, redis_client: redis.Redis, tmp_path: Path, padding: int,
) -> None:  # fmt: skip
    """The archived result lacks the signature the served one echoes; the manifest says so."""
    oss_bucket.put_object("m/hello.wav", (SAMPLES_DIR / "hello.wav").read_bytes())
    media_url = oss_bucket.sign_url("GET", "m/hello.wav", 600, slash_safe=True)
    box = make_sandbox(
        callback_url=callback_receiver.url, echo_signed_file_url=True, result_padding_bytes=padding
    )
    client = DashScopeClient(box.api_url, box.api_key, max_attempts=1)
    task_id = client.submit("fun-asr", [media_url])
    wait_for(lambda: callback_receiver.requests, timeout=15)
    body = callback_receiver.requests[0][1]
    link = json.loads(body)["data"]["output_result"]["output"]["results"][0]["transcription_url"]
    served = httpx.get(link).content
    store = ReceiptStore(redis_client, 600)
    store.claim(task_id, body)
    receipt = store.load(task_id)
    assert receipt is not None
    fetcher = ResultFetcher(re.compile(box.result_url_regex), max_bytes=10_000_000)
    archive = tmp_path / "archive"
    dest = open_destination(archive.as_uri(), load_settings())

    Archiver([dest], fetcher).run(receipt, Progress(redis_client, task_id, 600))

    stored = (archive / task_id / "results/0000.json").read_bytes()
    assert b"Signature=" in served and b"Signature=" not in stored
    assert stored == scrub(served)
    entry = json.loads((archive / task_id / "manifest.json").read_text())["files"][0]
    assert entry["redacted"] is True
    assert entry["served_sha256"] == hashlib.sha256(served).hexdigest()
    assert (entry["sha256"], entry["bytes"]) == (hashlib.sha256(stored).hexdigest(), len(stored))
    client.close()
    fetcher.close()
