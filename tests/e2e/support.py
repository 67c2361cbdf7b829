"""Helpers of the end-to-end tests: distinct real media, archive readers, credential scans."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import mutagen
from mutagen.id3 import ID3, TIT2

from tests.fixtures.sandbox import SAMPLE_SUFFIXES, SAMPLES_DIR

MODELS = ("fun-asr", "paraformer-v2", "qwen3-asr-flash-filetrans")

# Query parameters that make a URL a credential (contract, "Archive layout").
SIGNED_QUERY = re.compile(
    rb"(Signature|Expires|OSSAccessKeyId|x-oss-[a-z-]+|X-Amz-[A-Za-z]+)=", re.IGNORECASE
)


def distinct_media(target: Path, count: int) -> list[Path]:
    """``count`` real media files: the bundled samples in turn, each with its own title tag.

    The tag makes every copy's content (and so its upload key) unique while the audio stays
    decodable by ffprobe and mutagen.
    """
    target.mkdir(parents=True, exist_ok=True)
    samples = sorted(p for p in SAMPLES_DIR.iterdir() if p.suffix in SAMPLE_SUFFIXES)
    made = []
    for n in range(count):
        source = samples[n % len(samples)]
        copy = target / f"{n:02d}-{source.name}"
        shutil.copyfile(source, copy)
        audio = mutagen.File(copy)
        if audio.tags is None:
            audio.add_tags()
        if isinstance(audio.tags, ID3):
            audio.tags.add(TIT2(encoding=3, text=[f"copy {n}"]))
        else:
            audio.tags["title"] = [f"copy {n}"]
        audio.save()
        made.append(copy)
    return made


def local_manifests(root: Path) -> dict[str, dict[str, Any]]:
    """task_id → manifest of every task archived under ``root``."""
    return {p.parent.name: json.loads(p.read_text()) for p in root.glob("*/manifest.json")}


def s3_objects(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    """Key (below ``prefix``) → body of every object in ``bucket`` under ``prefix``."""
    bodies = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            bodies[item["Key"].removeprefix(prefix)] = body
    return bodies


def served_results(api_url: str, api_key: str, task_id: str) -> dict[int, bytes]:
    """Index → result bytes, downloaded from the links the service gives for ``task_id`` now."""
    headers = {"Authorization": f"Bearer {api_key}"}
    task = httpx.get(f"{api_url}/tasks/{task_id}", headers=headers, timeout=10).json()
    output = task["output"]
    entries = output.get("results") or ([output["result"]] if output.get("result") else [])
    return {
        n: httpx.get(entry["transcription_url"], timeout=10).content
        for n, entry in enumerate(entries)
        if entry.get("transcription_url")
    }


def signed_query_hits(blobs: Iterable[tuple[str, bytes]]) -> list[str]:
    """Names of the blobs that hold a signed URL's query parameter."""
    return [name for name, blob in blobs if SIGNED_QUERY.search(blob)]


def assert_archived_once(
    box: Any, archive: Path, s3: dict[str, bytes], tasks: int, files: int
) -> dict[str, dict[str, Any]]:
    """Every file archived once, locally and in S3, byte-identical to what ``box`` serves.

    ``s3`` holds the S3 copy (key below the destination prefix → body). Tasks whose callback
    the sandbox dropped must have been archived by reconciliation (which may also have taken
    a task whose event was merely late). Returns the manifests.
    """
    manifests = local_manifests(archive)
    assert len(manifests) == tasks
    assert sum(len(m["files"]) for m in manifests.values()) == files
    state = box.state()
    assert sum(s["status"] == 200 for s in state["submissions"]) == tasks  # a 429 made no task
    reconciled = {t for t, m in manifests.items() if m["source"] == "reconciliation"}
    assert reconciled >= set(state["dropped"])
    assert sum(key.endswith("/manifest.json") for key in s3) == tasks
    for task_id, manifest in manifests.items():
        served = served_results(box.api_url, box.env["DASHSCOPE_API_KEY"], task_id)
        for entry in manifest["files"]:
            assert entry["subtask_status"] == "SUCCEEDED"
            local = (archive / entry["key"]).read_bytes()
            assert local == served[entry["index"]] == s3[entry["key"]]
    return manifests


def tree_blobs(*roots: Path) -> list[tuple[str, bytes]]:
    """(path, content) of every file below ``roots``."""
    return [(str(p), p.read_bytes()) for root in roots for p in root.rglob("*") if p.is_file()]
