"""``asr-ingest health --worker NODE [--timeout S]``: does this worker still consume tasks?

Publishes a ping to the worker's own queue and waits for its answer in Redis
(:mod:`worker.health`); prints one line and exits 0 (``ok``, ``busy``) or 1 (``fail``). It is
the worker's Kubernetes liveness probe (``deploy/k8s/worker.yaml``; README, "Health checks").

A busy worker cannot take the ping: with ``acks_late`` and prefetch 1 each pool slot holds
one unacknowledged task and the broker sends nothing more until one is acknowledged. A long
archive (a large result, a slow destination) would make the probe fail and Kubernetes would
kill a worker that is doing its job, and its task would start over elsewhere. So when the
ping is not answered in time, the worker is asked through its control channel (Celery's
``inspect``, answered by the worker's main process): if it answers and every pool slot runs a
task, the verdict is ``busy`` (exit 0). The price: a worker whose consumer is dead is caught
only once a slot frees, which takes at most one task's hard time limit (90 % of
``BROKER_VISIBILITY_TIMEOUT_SECONDS``). A worker that answers nothing (frozen, cut off)
or answers with a free slot but takes no ping fails.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import click
import redis

from core.broker import publisher
from core.redis_client import connect
from core.settings import Settings, load_settings
from worker.health import DIRECT_EXCHANGE, HEALTH_PING_TASK, token_key

DEFAULT_TIMEOUT_SECONDS = 10.0
INSPECT_TIMEOUT_SECONDS = 1.0
POLL_SECONDS = 0.05
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check: ``ok`` (exit 0) and the one line to print."""

    ok: bool
    line: str


def check(settings: Settings, node: str, timeout_s: float) -> Verdict:
    """Ping worker ``node`` (``celery@host``) through the broker; wait ``timeout_s`` seconds.

    Returns ``ok`` when the token came back, ``busy`` when it did not but the worker answers
    its control channel with every pool slot taken, else a failure naming why. Never raises
    for an unreachable Redis or broker: that is a failure verdict.
    """
    client = connect(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    app = publisher(settings)
    token = uuid.uuid4().hex
    started = time.monotonic()
    try:
        app.send_task(
            HEALTH_PING_TASK,
            args=[token],
            exchange=DIRECT_EXCHANGE,
            routing_key=node,
            expires=timeout_s,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
        answered = _wait_for(client, token, started + timeout_s)
    except Exception as exc:  # any broker or Redis failure is a failed check
        return Verdict(False, f"fail: {node}: {type(exc).__name__} while pinging")
    finally:
        client.close()
    elapsed_ms = int((time.monotonic() - started) * 1000)
    if answered:
        return Verdict(True, f"ok: {node} consumed a ping in {elapsed_ms} ms")
    busy = busy_slots(app, node)
    if busy is not None:
        return Verdict(True, f"busy: {node} runs {busy} tasks; no free slot to take a ping")
    return Verdict(False, f"fail: {node} consumed no ping within {timeout_s:g} s")


def _wait_for(client: redis.Redis, token: str, deadline: float) -> bool:
    """Poll Redis for ``token`` until ``deadline`` (monotonic seconds); True once it is there."""
    while True:
        if client.exists(token_key(token)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


def busy_slots(app: Any, node: str) -> str | None:
    """``"N/N"`` when ``node`` answers ``inspect`` with every pool slot running a task, else None
    (no answer within 1 s, a free slot, or a broker error)."""
    try:
        inspect = app.control.inspect([node], timeout=INSPECT_TIMEOUT_SECONDS)
        stats = (inspect.stats() or {}).get(node)
        active = (inspect.active() or {}).get(node) if stats else None
    except Exception:  # a broker error: not busy, failed
        return None
    if stats is None or active is None:
        return None
    slots = int(stats.get("pool", {}).get("max-concurrency", 0))
    return f"{len(active)}/{slots}" if slots and len(active) >= slots else None


@click.command()
@click.option(
    "--worker",
    "node",
    default=lambda: f"celery@{socket.gethostname()}",
    show_default="celery@<this host>",
    help="Celery node name of the worker to check.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_TIMEOUT_SECONDS,
    show_default=True,
    help="Seconds to wait for the worker to consume the ping.",
)
def health(node: str, timeout_s: float) -> None:
    """Check that a worker consumes tasks: exit 0 (ok, busy) or 1, with one line."""
    verdict = check(load_settings(), node, timeout_s)
    click.echo(verdict.line)
    raise SystemExit(0 if verdict.ok else 1)
