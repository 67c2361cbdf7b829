"""Parse a verified EventBridge delivery body into the few fields intake needs.

Envelope and fields from `docs/dashscope-transcription.md` ("The AsyncTaskFinish event"): a
CloudEvents object whose ``type`` is ``dashscope:System:AsyncTaskFinish``; ``data.task_id`` is
the deduplication key; the model is the last ``:`` segment of ``data.user_api_unique_key``.
Runs only on bodies whose signature verified. Imports neither Flask nor Celery.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from core.models import model_from_api_key
from webhook.errors import EventError

ASYNC_TASK_FINISH = "dashscope:System:AsyncTaskFinish"

# DashScope task ids are UUIDs; anything that could escape an archive prefix ("/", "..") or
# carry control characters is refused, since the id becomes a Redis key and an object key.
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


@dataclass(frozen=True, slots=True)
class Event:
    """What intake needs of one event; ``task_id`` is "" for events of another ``type``."""

    type: str
    event_id: str
    task_id: str
    model: str

    @property
    def is_task_finish(self) -> bool:
        """True for DashScope's ``AsyncTaskFinish`` events, the only ones we archive."""
        return self.type == ASYNC_TASK_FINISH


def parse_event(body: bytes) -> Event:
    """Read ``type``, ``id``, ``data.task_id`` and the model from a raw event body.

    Raises :class:`EventError` when ``body`` is not a JSON object, or when an
    ``AsyncTaskFinish`` event has no usable ``data.task_id``. Events of another type are
    returned with ``task_id == ""`` (the caller answers ``ignored``).
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise EventError("body is not JSON") from exc
    if not isinstance(document, dict):
        raise EventError("body is not a JSON object")
    kind, event_id = _text(document.get("type")), _text(document.get("id"))
    if kind != ASYNC_TASK_FINISH:
        return Event(type=kind, event_id=event_id, task_id="", model="")
    data = document.get("data")
    if not isinstance(data, dict):
        raise EventError("event has no data object")
    task_id = data.get("task_id")
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise EventError("event has no usable data.task_id")
    api_key = _text(data.get("user_api_unique_key"))
    model = model_from_api_key(api_key) if api_key else ""
    return Event(type=kind, event_id=event_id, task_id=task_id, model=model)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
