"""Admission: read a verified delivery's envelope and decide whether it is ours to take.

Envelope and fields from `docs/dashscope-transcription.md` ("The completion event"): a
CloudEvents object whose ``type`` is ``dashscope:System:AsyncTaskFinish``, ``source``
``acs.dashscope`` and ``aliyunaccountid`` the sending account; ``data.task_id`` is the
deduplication key; the model is the last ``:`` segment of ``data.user_api_unique_key``. Time
fields are never read (the documentation's own examples are malformed). Runs only on bodies
whose signature verified. Imports neither Flask nor Celery.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Literal

from core.errors import PermanentError, Reason
from core.events import UNFINISHED_STATUSES, safe_text
from core.models import family_of, model_from_api_key
from webhook.errors import EventError
from webhook.trust import Trust

ASYNC_TASK_FINISH = "dashscope:System:AsyncTaskFinish"

# DashScope task ids are UUIDs; anything that could escape an archive prefix ("/", "..") or
# carry control characters is refused, since the id becomes a Redis key and an object key.
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")

IgnoreReason = Literal[Reason.OTHER_TYPE, Reason.NOT_TRANSCRIPTION, Reason.NOT_FINISHED]


@dataclass(frozen=True, slots=True)
class Envelope:
    """What intake needs of one event.

    ``task_id`` is "" when the event has none that is usable (``problem`` says why); every
    string encodes as UTF-8 (:func:`core.events.safe_text`).
    """

    type: str
    event_id: str
    task_id: str = ""
    model: str = ""
    source: str = ""
    account_id: str = ""
    task_status: str = ""
    problem: str = ""

    @property
    def is_task_finish(self) -> bool:
        """True for DashScope's ``AsyncTaskFinish`` events, the only ones we archive."""
        return self.type == ASYNC_TASK_FINISH


def parse_envelope(body: bytes) -> Envelope:
    """Read the envelope (``type``, ``id``, ``source``, ``aliyunaccountid``) and, for an
    ``AsyncTaskFinish`` event, ``data.task_id``, ``data.task_status`` and the model.

    Raises :class:`EventError` only when ``body`` is not a JSON object; a missing or unusable
    ``data.task_id`` is left to :func:`admit` (after the tenant check).
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise EventError("body is not JSON") from exc
    if not isinstance(document, dict):
        raise EventError("body is not a JSON object")
    envelope = Envelope(
        type=_text(document.get("type")),
        event_id=_text(document.get("id")),
        source=_text(document.get("source")),
        account_id=_text(document.get("aliyunaccountid")),
    )
    if not envelope.is_task_finish:
        return envelope
    data = document.get("data")
    if not isinstance(data, dict):
        return replace(envelope, problem="event has no data object")
    task_id = data.get("task_id")
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        return replace(envelope, problem="event has no usable data.task_id")
    api_key = _text(data.get("user_api_unique_key"))
    return replace(
        envelope,
        task_id=task_id,
        model=model_from_api_key(api_key) if api_key else "",
        task_status=_text(data.get("task_status")),
    )


def admit(event: Envelope, trust: Trust) -> IgnoreReason | None:
    """None when ``event`` is to be stored and archived, else why it is answered ``ignored``.

    Order: tenant (:meth:`Trust.check_tenant` raises :class:`ForeignAccountError`, 403), type
    (``other_type``), a usable ``data.task_id`` (else :class:`EventError`, 400), model family
    (``not_transcription``: image, video and chat jobs reach the default rule too), status
    (``not_finished``: a ``PENDING``/``RUNNING``/``SUSPENDED`` task is not archived as final;
    its real completion event, or reconciliation, takes it later, which a stored receipt
    would turn into a ``duplicate``).
    """
    trust.check_tenant(event.source, event.account_id)
    if not event.is_task_finish:
        return Reason.OTHER_TYPE
    if not event.task_id:
        raise EventError(event.problem)
    if not is_transcription(event.model):
        return Reason.NOT_TRANSCRIPTION
    if event.task_status in UNFINISHED_STATUSES:
        return Reason.NOT_FINISHED
    return None


def is_transcription(model: str) -> bool:
    """True when ``model`` belongs to one of the three transcription families."""
    try:
        family_of(model)
    except PermanentError:
        return False
    return True


def _text(value: object) -> str:
    return safe_text(value) if isinstance(value, str) else ""
