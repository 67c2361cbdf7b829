"""Lone UTF-16 surrogates in a verified body: never a 5xx, stored as sent, archived."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from core.settings import Settings, load_settings
from core.store import ReceiptStore
from tests.support import task_events as te
from tests.support.eventbridge_signer import Signer
from tests.support.result_server import ResultServer
from worker.archiving.archive import Archiver, Progress
from worker.archiving.destinations import open_destination
from worker.archiving.fetch import ResultFetcher

CALLBACK = "/callbacks/eventbridge"
LONE = "\ud800"


def surrogate_event(task_id: str, result_url: str) -> dict[str, Any]:
    """An AsyncTaskFinish event with lone surrogates in the id, the model key and the results."""
    output = te.batch_output(
        task_id,
        [
            te.ok(result_url, file_url=f"https://media.example/{LONE}.wav?Expires=1&Signature=x"),
            {**te.failed(), "code": f"Bad{LONE}", "message": "\udfff"},
        ],
    )
    document: dict[str, Any] = json.loads(te.event(task_id, "paraformer-v2", output))
    document["id"] = f"evt-{LONE}"
    document["aliyunaccountid"] = f"1{LONE}"
    document["data"]["user_api_unique_key"] += LONE
    document["data"]["note"] = {f"k{LONE}": [LONE, "\\" + LONE]}
    return document


def encoded(document: dict[str, Any], raw: bool) -> bytes:
    """``document`` as JSON bytes: surrogates as ``\\ud800`` escapes, or raw (invalid UTF-8)."""
    if raw:
        return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(document).encode()


@pytest.mark.parametrize("raw", [False, True], ids=["escaped", "raw-bytes"])
def test_lone_surrogates_are_accepted_stored_and_archived(
    client: FlaskClient,
    signer: Signer,
    redis_client: redis.Redis,
    settings: Settings,
    result_server: ResultServer,
    tmp_path: Path,
    raw: bool,
) -> None:
    """Accepted (not a 5xx); the raw bytes stored; event.json and the manifest valid UTF-8."""
    url = result_server.add("/r/s.json", te.result_file("s.wav"))
    document = surrogate_event("task-sur", url)
    body = encoded(document, raw)
    response = client.post(CALLBACK, data=body, headers=signer.headers(body))
    assert (response.status_code, response.get_json()["status"]) == (200, "accepted")

    receipt = ReceiptStore(redis_client, settings.dedupe_ttl_seconds).load("task-sur")
    assert receipt is not None and receipt.body == body
    assert (receipt.event_id, receipt.model) == ("evt-\\ud800", "paraformer-v2\\ud800")

    destination = open_destination((tmp_path / "archive").as_uri(), load_settings())
    fetcher = ResultFetcher(re.compile(result_server.url_regex), max_bytes=100_000)
    try:
        outcome = Archiver([destination], fetcher).run(
            receipt, Progress(redis_client, "task-sur", 600)
        )
    finally:
        fetcher.close()
    assert outcome.complete
    event_json = (tmp_path / "archive" / "task-sur" / "event.json").read_bytes()
    archived = json.loads(event_json.decode("utf-8"))
    assert archived["id"] == f"evt-{LONE}"
    assert archived["data"]["note"] == document["data"]["note"]
    assert archived["data"]["output_result"]["output"]["results"][0]["file_url"] == (
        f"https://media.example/{LONE}.wav"
    )
    manifest = json.loads((tmp_path / "archive" / "task-sur" / "manifest.json").read_bytes())
    assert manifest["model"] == "paraformer-v2\\ud800"
    assert [f["subtask_status"] for f in manifest["files"]] == ["SUCCEEDED", "FAILED"]
    assert manifest["files"][1]["code"] == "Bad\\ud800"


@pytest.mark.parametrize(
    "field", ["id", "type", "source", "aliyunaccountid", "user_api_unique_key", "task_status"]
)
def test_surrogate_in_any_envelope_field_is_never_5xx(
    client: FlaskClient, signer: Signer, field: str
) -> None:
    """A lone surrogate in any field the webhook reads gives a 2xx, 400 or 403, never a 5xx."""
    document = json.loads(te.event("task-sur-2", "fun-asr", None))
    if field in ("user_api_unique_key", "task_status"):
        document["data"][field] = LONE
    else:
        document[field] = LONE
    body = encoded(document, raw=False)
    response = client.post(CALLBACK, data=body, headers=signer.headers(body))
    assert response.status_code in (200, 400, 403), response.get_data()
