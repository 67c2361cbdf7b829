"""Archiving real sandbox output: events pushed by the DashScope stand-in, its result files."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from core.settings import load_settings
from core.store import ReceiptStore
from sandbox.server import Sandbox
from tests.fixtures.sandbox import CallbackReceiver, MediaServer, wait_for
from worker.archiving.archive import Archiver, Progress
from worker.archiving.destinations import open_destination
from worker.archiving.fetch import ResultFetcher
from worker.dashscope import DashScopeClient


@pytest.mark.parametrize("model", ["fun-asr", "paraformer-v2", "qwen3-asr-flash-filetrans"])
def test_sandbox_event_is_archived(
    make_sandbox: Callable[..., Sandbox], callback_receiver: CallbackReceiver,
    media_server: MediaServer, redis_client: redis.Redis, tmp_path: Path, model: str,
) -> None:  # fmt: skip
    """A sandbox task's pushed event archives its result files byte for byte, each family."""
    box = make_sandbox(callback_url=callback_receiver.url)
    urls = [media_server.url_for("hello.wav")]
    if not model.startswith("qwen"):
        urls.append(media_server.url_for("missing.wav"))
    client = DashScopeClient(box.api_url, box.api_key, max_attempts=1)
    task_id = client.submit(model, urls)
    wait_for(lambda: callback_receiver.requests, timeout=15)
    body = callback_receiver.requests[0][1]
    store = ReceiptStore(redis_client, 600)
    store.claim(task_id, body)
    fetcher = ResultFetcher(re.compile(box.result_url_regex), max_bytes=10_000_000)
    dest = open_destination((tmp_path / "archive").as_uri(), load_settings())
    receipt = store.load(task_id)
    assert receipt is not None
    outcome = Archiver([dest], fetcher, query=client.query).run(
        receipt, Progress(redis_client, task_id, 600)
    )
    manifest = json.loads((tmp_path / "archive" / task_id / "manifest.json").read_text())
    assert outcome.complete and manifest["model"] == model
    statuses = [f["subtask_status"] for f in manifest["files"]]
    assert statuses == (["SUCCEEDED"] if model.startswith("qwen") else ["SUCCEEDED", "FAILED"])
    result = json.loads((tmp_path / "archive" / task_id / "results/0000.json").read_bytes())
    assert result["file_url"].split("?")[0] == urls[0].split("?")[0]
    assert "Signature" not in json.dumps(manifest)
    client.close()
    fetcher.close()
