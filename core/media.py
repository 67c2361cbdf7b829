"""Which local recording each submitted file came from: the media index of a task.

When the submitter records a task it also writes, for each of its files, the local media the
file was uploaded from; the archiver reads it back to fill a manifest's ``files[].media``
(`docs/contract.md`, "Archive layout": the archive alone says which transcript belongs to
which recording). Tasks submitted some other way have no index: their ``media`` is null.

Key: ``asr:media:<task_id>`` (hash: object key of the uploaded media → JSON
``{"path", "sha256", "bytes"}``), expiring with the submission records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis

MEDIA_KEY = "asr:media:{task_id}"


@dataclass(frozen=True, slots=True)
class Media:
    """A local recording: ``path`` as the submitter saw it, hex ``sha256``, size in ``bytes``."""

    path: str
    sha256: str
    bytes: int

    def record(self) -> dict[str, Any]:
        """The manifest's ``media`` object."""
        return asdict(self)


def write_media(
    pipe: redis.client.Pipeline, task_id: str, media: Mapping[str, Media], ttl_s: int
) -> None:
    """Queue on ``pipe`` the index of ``task_id``: object key → :class:`Media`."""
    if not media:
        return
    key = MEDIA_KEY.format(task_id=task_id)
    pipe.hset(key, mapping={k: json.dumps(asdict(m)) for k, m in media.items()})
    pipe.expire(key, ttl_s)


def read_media(client: redis.Redis, task_id: str) -> dict[str, Media]:
    """The index of ``task_id`` (empty when asr-ingest did not submit it)."""
    raw = cast("dict[bytes, bytes]", client.hgetall(MEDIA_KEY.format(task_id=task_id)))
    return {k.decode(): Media(**json.loads(v)) for k, v in raw.items()}


def media_for(file_url: str, index: Mapping[str, Media], *, only_file: bool) -> Media | None:
    """The media a result entry's ``file_url`` points at: the index entry whose object key ends
    the URL's path. With ``only_file`` (the task has one entry) and one indexed file, that file:
    single-file families may not echo ``file_url``."""
    path = unquote(urlsplit(file_url).path)
    for key, media in index.items():
        if path.endswith("/" + key):
            return media
    if only_file and len(index) == 1:
        return next(iter(index.values()))
    return None
