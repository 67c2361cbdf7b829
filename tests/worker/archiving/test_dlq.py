"""Dead letters: the Redis record, ``asr-ingest dlq list`` and ``dlq replay`` with a real worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from asr_ingest.cli import main
from core.settings import load_settings
from core.store import ReceiptStore
from tests.fixtures.worker import WorkerFactory, broker_url_for, wait_until
from tests.support import task_events as te
from tests.support.result_server import Fault, ResultServer
from worker import create_celery
from worker.archiving.dlq import DeadLetters


@pytest.fixture
def cli_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the command line at the test's Redis and broker."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("CELERY_BROKER_URL", broker_url_for(redis_url))


def test_dead_letters_record_and_order(redis_client: redis.Redis) -> None:
    """Records keep reason, attempts and a redacted error; listing is oldest first."""
    letters = DeadLetters(redis_client)
    letters.add("t-b", "result_http_5xx", 6, "503 from https://h/x.json?Signature=abc", now=20.0)
    letters.add("t-a", "unknown_model", 1, "unknown transcription model 'x'", now=10.0)
    assert [d.task_id for d in letters.list()] == ["t-a", "t-b"]
    record = letters.get("t-b")
    assert record is not None and (record.reason, record.attempts) == ("result_http_5xx", 6)
    assert record.last_error == "503 from https://h/x.json"
    assert letters.remove("t-a") and not letters.remove("t-a")
    assert [d.task_id for d in letters.list()] == ["t-b"]


def test_dlq_list_command(redis_client: redis.Redis, cli_env: None) -> None:
    """``asr-ingest dlq list`` prints every dead letter (table, or JSON lines)."""
    DeadLetters(redis_client).add("t-1", "unknown_model", 1, "unknown model", now=0.0)
    table = CliRunner().invoke(main, ["dlq", "list"])
    assert table.exit_code == 0 and "t-1" in table.output and "unknown_model" in table.output
    lines = CliRunner().invoke(main, ["dlq", "list", "--json"]).output.splitlines()
    assert [json.loads(line)["task_id"] for line in lines] == ["t-1"]


def test_dlq_replay_unknown_id_fails(redis_client: redis.Redis, cli_env: None) -> None:
    """Replaying an id that is not a dead letter exits 1 and names it."""
    result = CliRunner().invoke(main, ["dlq", "replay", "t-none"])
    assert result.exit_code == 1 and "t-none" in result.output
    assert redis_client.llen("archive") == 0


def test_dlq_replay_archives_again(
    celery_worker_factory: WorkerFactory, redis_client: redis.Redis, cli_env: None,
    result_server: ResultServer, tmp_path: Path,
) -> None:  # fmt: skip
    """A task dead-lettered for a permanent error is archived completely after a replay."""
    body = te.result_file()
    url = result_server.add("/r/a.json", body, faults=[Fault(status=400)])
    event = te.event("t-r", "fun-asr", te.batch_output("t-r", [te.ok(url)]))
    store = ReceiptStore(redis_client, 600)
    store.claim("t-r", event)
    env = {
        "ARCHIVE_URLS": (tmp_path / "archive").as_uri(),
        "RESULT_URL_REGEX": result_server.url_regex,
    }
    celery_worker_factory(env)
    create_celery(load_settings()).send_task("asr_ingest.archive", args=["t-r"], queue="archive")
    wait_until(lambda: DeadLetters(redis_client).get("t-r"), what="dead letter")
    manifest_path = tmp_path / "archive/t-r/manifest.json"
    assert json.loads(manifest_path.read_text())["files"][0]["error"]["reason"] == "result_http_4xx"
    result = CliRunner().invoke(main, ["dlq", "replay"])
    assert result.exit_code == 0 and "replayed t-r" in result.output
    wait_until(lambda: store.load("t-r").state == "archived", what="archived after replay")
    assert json.loads(manifest_path.read_text())["archive_status"] == "complete"
    assert (tmp_path / "archive/t-r/results/0000.json").read_bytes() == body
    assert DeadLetters(redis_client).list() == []
