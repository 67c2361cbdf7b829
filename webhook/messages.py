"""The archive message as kombu's Redis transport stores it, for the webhook's one-trip intake.

When the Celery broker is the Redis database of ``REDIS_URL`` (the default: ``CELERY_BROKER_URL``
unset), a queue is a Redis list and publishing is one ``LPUSH`` of a JSON document (kombu
``transport/redis.py``, ``Channel._put``), so the webhook can claim the receipt and push the
message in one Lua script (:meth:`core.store.ReceiptStore.claim_enqueued`).

:class:`ArchiveMessages` builds that document with Celery's and kombu's own code, once: it
calls ``celery.send_task`` on a kombu connection whose transport records what would be
``LPUSH``\\ ed instead of sending it. Celery fills in the protocol-2 headers (``as_task_v2``:
``task``, ``id``, ``argsrepr``, ``origin``, ...) and serializes the body as JSON; kombu's virtual
channel (the base of its Redis channel) adds ``properties.body_encoding`` (``base64``; a
``body_encoding`` transport option that changes it makes :func:`webhook.intake.create_intake`
fall back to publishing), ``properties.delivery_tag`` and ``properties.delivery_info``
(``exchange`` ``""``, ``routing_key`` ``archive``: a restored message goes straight back to the
list). Per delivery only the
DashScope ``task_id`` (body ``args`` and ``argsrepr``), a fresh Celery task id (``id``,
``root_id``, ``correlation_id``) and a fresh ``delivery_tag`` (the key of the unacked entry
while a worker holds the message) are filled in. ``origin`` names the process that built it.

The list key is kombu's: the queue name, plus ``<sep><step>`` for a priority above 0 (our
messages carry priority 0, so ``archive``), behind the transport option ``global_keyprefix``.
Our queues declare no ``x-expires``, so kombu's ``_put`` is a bare ``LPUSH`` (no ``PEXPIRE``),
and the message goes to the anonymous exchange, so no ``_kombu.binding.*`` lookup is involved.
A message pushed here is consumed, acknowledged and restored (rejected with requeue, or
unacknowledged past the visibility timeout) like one from ``send_task``: see
``tests/webhook/test_intake_atomic.py``.
"""

from __future__ import annotations

import base64
import os
import re
import uuid
from bisect import bisect
from typing import Any

from kombu import Connection  # type: ignore[attr-defined]  # kombu has no type hints
from kombu.transport import memory
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel
from kombu.utils.json import dumps
from redis.connection import parse_url

from core.queues import ARCHIVE_QUEUE, ARCHIVE_TASK
from core.settings import Settings

_TASK_ID = "asrTASKIDasr"  # sentinels: plain characters, so JSON and repr keep them verbatim
_CELERY_ID = "asrCELERYIDasr"
_TAG = "asrTAGasr"
_BODY = "asrBODYasr"
_SAFE_TASK_ID = re.compile(r"[A-Za-z0-9_.:-]+")
"""What :func:`webhook.admission.parse_envelope` admits: no escaping needed in JSON or ``repr``."""


class _Template:
    """A text cut at sentinel strings; :meth:`fill` joins it with values in their place."""

    def __init__(self, text: str, sentinels: list[str]) -> None:
        pattern = "(" + "|".join(map(re.escape, sentinels)) + ")"
        self._parts = re.split(pattern, text)  # literals at even indexes, sentinels at odd

    def fill(self, values: dict[str, str]) -> str:
        parts = self._parts[:]
        for n in range(1, len(parts), 2):
            parts[n] = values[parts[n]]
        return "".join(parts)


class _CaptureChannel(memory.Channel):
    """A virtual channel that records what its ``_put`` gets instead of queueing it."""

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self.connection.captured.append((queue, message))


class _CaptureTransport(memory.Transport):
    Channel = _CaptureChannel

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)  # type: ignore[no-untyped-call]  # kombu is untyped
        self.captured: list[tuple[str, dict[str, Any]]] = []


class ArchiveMessages:
    """``asr_ingest.archive(task_id)`` messages on queue ``archive``, as stored by kombu's Redis
    transport; built once from ``celery`` (the app of :func:`core.broker.publisher`).

    Raises :class:`RuntimeError` at construction when Celery's message is not the expected one
    (``body_encoding`` other than base64, or a field it fills in missing).
    """

    def __init__(self, celery: Any) -> None:
        options = dict(celery.conf.broker_transport_options or {})
        queue, message = _capture(celery, options)
        props = message["properties"]
        self.queue_key = options.get("global_keyprefix", "") + _list_key(queue, props, options)
        """Redis list the message goes on (``archive``)."""
        if props.get("body_encoding") != "base64":  # kombu's default; the option may change it
            raise RuntimeError(f"unsupported body_encoding {props.get('body_encoding')!r}")
        text = base64.b64decode(message["body"]).decode()
        self._body = _Template(text, [_TASK_ID])
        props["delivery_tag"] = _TAG
        message["body"] = _BODY
        outer = dumps(message)  # type: ignore[no-untyped-call]  # kombu is untyped
        if _TAG not in outer or _CELERY_ID not in outer or _TASK_ID not in text:
            raise RuntimeError("Celery's archive message lacks a field this module fills in")
        self._outer = _Template(outer, [_TASK_ID, _CELERY_ID, _TAG, f'"{_BODY}"'])

    def render(self, task_id: str) -> str:
        """The JSON document to ``LPUSH`` for ``task_id`` (fresh Celery id and delivery tag).

        Raises :class:`ValueError` for a ``task_id`` outside ``[A-Za-z0-9_.:-]+``.
        """
        if not _SAFE_TASK_ID.fullmatch(task_id):
            raise ValueError(f"task_id needs escaping: {task_id!r}")
        body = base64.b64encode(self._body.fill({_TASK_ID: task_id}).encode()).decode()
        celery_id, tag = _two_uuid4()
        return self._outer.fill(
            {
                _TASK_ID: task_id,
                _CELERY_ID: celery_id,
                _TAG: tag,
                f'"{_BODY}"': f'"{body}"',  # base64: nothing to escape
            }
        )


def _two_uuid4() -> tuple[str, str]:
    """Two random (version 4) UUIDs as text, from one ``os.urandom`` call: ``uuid.uuid4()``
    reads 16 bytes per id, one ``getrandom`` system call each (seen with ``strace -c`` on a
    gunicorn worker, ``docs/benchmarks.md``)."""
    random = os.urandom(32)
    return (
        str(uuid.UUID(bytes=random[:16], version=4)),
        str(uuid.UUID(bytes=random[16:], version=4)),
    )


def _capture(celery: Any, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Run ``celery.send_task`` for the archive task into a recording transport."""
    connection = Connection(transport=_CaptureTransport, transport_options=options)  # type: ignore[no-untyped-call]  # kombu is untyped
    with connection:
        celery.send_task(
            ARCHIVE_TASK,
            args=[_TASK_ID],
            queue=ARCHIVE_QUEUE,
            task_id=_CELERY_ID,
            connection=connection,
        )
        captured = connection.transport.captured
    if len(captured) != 1:
        raise RuntimeError(f"expected one archive message, Celery produced {len(captured)}")
    queue, message = captured[0]
    return str(queue), message


def _list_key(queue: str, properties: dict[str, Any], options: dict[str, Any]) -> str:
    """kombu's Redis list for ``queue`` at the message's priority (``Channel._q_for_pri``)."""
    steps = options.get("priority_steps", PRIORITY_STEPS)
    step = steps[bisect(steps, int(properties.get("priority") or 0)) - 1]
    return f"{queue}{options.get('sep', RedisChannel.sep)}{step}" if step else queue


def broker_is_redis_store(settings: Settings) -> bool:
    """True when the Celery broker is the same Redis server and database as ``REDIS_URL``.

    Compares locations only (host and port, or socket path; database number), not credentials.
    Conservative: spellings it cannot match (``localhost`` against ``127.0.0.1``, Sentinel,
    RabbitMQ, several URLs) count as different, which selects the publish path (always correct).
    """
    broker = _broker_location(settings.broker_url)
    return broker is not None and broker == _location(settings.redis_url)


def _location(redis_url: str) -> tuple[str, int, int] | None:
    """(host or socket path, port or 0, database) of a redis-py URL; None when not Redis."""
    try:
        params = parse_url(redis_url)  # type: ignore[no-untyped-call]  # redis-py is untyped here
    except ValueError:
        return None
    db = int(params.get("db", 0))
    if "path" in params:
        return (str(params["path"]), 0, db)
    return (str(params.get("host", "localhost")), int(params.get("port", 6379)), db)


def _broker_location(broker_url: str) -> tuple[str, int, int] | None:
    """As :func:`_location` for kombu's spellings (``redis+socket://PATH?virtual_host=N``)."""
    if broker_url.startswith("redis+socket://"):
        path, _, query = broker_url.removeprefix("redis+socket://").partition("?")
        params = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
        return _location(f"unix://{path}?db={params.get('virtual_host', '0')}")
    if broker_url.startswith(("redis://", "rediss://")) and ";" not in broker_url:
        return _location(broker_url)
    return None
