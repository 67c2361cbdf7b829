"""Benchmark: the webhook against the limit and a bare Flask endpoint, same gunicorn settings.

Run by ``make bench`` (``python tests/benchmarks/webhook_bench.py``). It starts an embedded
Redis (AOF on, ``appendfsync everysec``: the durability of ``deploy/docker-compose.yml``), an
HTTPS certificate host, and gunicorn three times with the Procfile's ``web`` settings (worker
class, config file, workers, timeout; see :class:`tests.benchmarks.common.WebCommand`):

(a) **bare**: a Flask app that answers 200 with a small JSON body to any POST;
(b) **limit**: :mod:`tests.benchmarks.limit_app`, only the unavoidable work (v2 signature with a
    cached key, one Lua claim + LPUSH of a pre-rendered message, a small JSON answer);
(c) **webhook**: ``webhook.wsgi:app``, the Procfile's entrypoint, with real signatures (v2),
    unique ``task_id``\\ s, real Redis and the default intake (:mod:`webhook.intake`).

Client processes send pre-signed raw HTTP/1.1 requests, first closed-loop (peak requests/s),
then open-loop at half that server's peak rate (latency from each request's scheduled send
time). Per server and round: requests/s, p50/p99 at peak and at half peak, CPU ms per request
of the gunicorn processes and of Redis. Figures (medians over ``--rounds``): webhook peak /
limit peak (target >= 0.9), webhook p99 at half peak (< 25 ms), webhook CPU per request minus
bare's (<= 0.25 ms).

``--profile`` profiles the request path in-process instead: CPU microseconds per step of the
webhook's delivery (signature, parse, message render, intake script, log line, metrics, JSON
answer), whole WSGI requests of all three apps, the remainder attributed to Flask/werkzeug,
then whole requests under cProfile.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO_ROOT))

import redis  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402  # after sys.path
from cryptography.hazmat.primitives.serialization import load_pem_private_key  # noqa: E402
from flask import Flask  # noqa: E402

from asr_ingest.embedded import EmbeddedRedis  # noqa: E402
from asr_ingest.stack import ChildSpec, Stack  # noqa: E402
from asr_ingest.starters import free_port, http_probe, script  # noqa: E402
from tests.benchmarks.common import (  # noqa: E402
    Figure,
    WebCommand,
    median_of,
    tree_cpu_seconds,
    write_figures,
)
from tests.benchmarks.limit_app import TASK_ID_MARK, create_limit_app  # noqa: E402
from tests.support.eventbridge_signer import (  # noqa: E402
    CertificateHost,
    Identity,
    Route,
    Signer,
    make_identity,
)

TARGET_PATH = "/callbacks/eventbridge"
CERT_PATH = "/certs/eventbridge.pem"


def create_bare_app() -> Flask:
    """The baseline: a Flask app answering 200 with a small JSON body to any POST."""
    app = Flask("bare")

    @app.post("/callbacks/eventbridge")
    def callback() -> tuple[dict[str, str], int]:
        return {"status": "accepted"}, 200

    return app


def gunicorn_spec(
    name: str, app_ref: str, port: int, env: dict[str, str], command: WebCommand
) -> ChildSpec:
    """gunicorn with the Procfile's ``web`` settings, the same for every app.

    Its stdout goes to ``/dev/null``: the webhook still writes its log line per delivery (its
    cost), but this process no longer reads and redacts each line on the same CPUs (a cost
    only the webhook's runs used to carry). stderr (gunicorn's warnings) is still shown.
    """
    gunicorn = [*command.argv(script("gunicorn"), app_ref, port), "--log-level", "warning"]
    argv = ["/bin/sh", "-c", 'exec "$@" > /dev/null', "gunicorn", *gunicorn]
    probe = http_probe(
        f"http://127.0.0.1:{port}/livez" if name == "webhook" else f"http://127.0.0.1:{port}/"
    )
    return ChildSpec(
        name, argv, env=env, probe=probe, cwd=REPO_ROOT, url=f"http://127.0.0.1:{port}"
    )


def event_body(task_id: str) -> bytes:
    """A compact AsyncTaskFinish event of typical size (about 1 KiB)."""
    results = ",".join(
        f'{{"file_url":"https://bucket.oss-cn-beijing.aliyuncs.com/m/{n}.wav","transcription_url":'
        f'"https://dashscope-result.oss-cn-beijing.aliyuncs.com/r/{n}.json?Expires=1&Signature=x",'
        f'"subtask_status":"SUCCEEDED"}}'
        for n in range(3)
    )
    return (
        f'{{"id":"{uuid.uuid4()}","source":"acs.dashscope","specversion":"1.0",'
        f'"type":"dashscope:System:AsyncTaskFinish","data":{{"task_id":"{task_id}",'
        f'"task_status":"SUCCEEDED","user_api_unique_key":"apikey:v1:audio:asr:transcription:'
        f'paraformer-v2","contain_result":true,"output_result":{{"output":{{"results":[{results}]}}}}}}}}'
    ).encode()


def raw_request(host: str, headers: dict[str, str], body: bytes) -> bytes:
    """One HTTP/1.1 POST as bytes."""
    lines = [f"POST {TARGET_PATH} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + body


def send(port: int, request: bytes) -> int:
    """Send one request on a new connection; the HTTP status."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return int(b"".join(chunks).split(b" ", 2)[1])


@dataclass(frozen=True)
class Job:
    """One client process's work: ``count`` requests, closed loop or paced at ``interval_s``."""

    port: int
    count: int
    identity_pem: tuple[bytes, bytes]
    cert_url: str
    target_url: str
    interval_s: float = 0.0


def prepare(job: Job) -> list[bytes]:
    """Pre-sign ``job.count`` requests with unique task ids (signing is not measured)."""
    key = load_pem_private_key(job.identity_pem[0], None)
    assert isinstance(key, rsa.RSAPrivateKey)
    signer = Signer(Identity(key, job.identity_pem[1]), job.cert_url, job.target_url)
    requests = []
    for _ in range(job.count):
        body = event_body(f"bench-{uuid.uuid4()}")
        requests.append(raw_request(f"127.0.0.1:{job.port}", signer.headers(body), body))
    return requests


def run_client(job: Job, barrier: Any, results: Any) -> None:
    """Prepare, wait for every client, send; put (start, end, [(latency s, status)])."""
    requests = prepare(job)
    barrier.wait()
    samples = []
    base = time.perf_counter()
    for n, request in enumerate(requests):
        scheduled = base + n * job.interval_s
        while job.interval_s and (now := time.perf_counter()) < scheduled:
            time.sleep(min(scheduled - now, 0.001))
        started = scheduled if job.interval_s else time.perf_counter()
        status = send(job.port, request)
        samples.append((time.perf_counter() - started, status))
    results.put((base, time.perf_counter(), samples))


@dataclass(frozen=True)
class Result:
    """Throughput (requests/s) and latency percentiles (ms) of one phase."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def phase(jobs: list[Job]) -> Result:
    """Run ``jobs`` in parallel client processes started together; wall time over all of them."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(len(jobs)), context.Queue()
    processes = [context.Process(target=run_client, args=(j, barrier, results)) for j in jobs]
    for process in processes:
        process.start()
    outcomes = [results.get() for _ in processes]
    for process in processes:
        process.join()
    wall = max(o[1] for o in outcomes) - min(o[0] for o in outcomes)
    samples = [s for o in outcomes for s in o[2]]
    latencies = sorted(s[0] * 1000 for s in samples)
    quantiles = statistics.quantiles(latencies, n=100)
    errors = sum(1 for _, status in samples if status != 200)
    return Result(len(samples) / wall, quantiles[49], quantiles[98], errors)


def server_cpu_seconds(master_pid: int) -> float:
    """CPU seconds (user + system) used so far by gunicorn: the master and its workers."""
    return tree_cpu_seconds(master_pid)


def redis_cpu_seconds(redis_url: str) -> float:
    """CPU time (user + system, seconds) used so far by the Redis server (``INFO cpu``)."""
    info = redis.Redis.from_url(redis_url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass(frozen=True)
class Measurement:
    """One server's figures: the peak phase, the half-peak phase, CPU ms per peak request of
    the gunicorn workers and of Redis (which shares the machine's CPUs)."""

    peak: Result
    paced: Result
    cpu_ms: float
    redis_cpu_ms: float


def measure(
    master_pid: int, port: int, job: Job, clients: int, paced_s: float, redis_url: str
) -> Measurement:
    """Peak (closed loop) then half-peak (open loop) phases; ``job`` is one client's peak share."""
    cpu_before, redis_before = server_cpu_seconds(master_pid), redis_cpu_seconds(redis_url)
    peak = phase([job] * clients)
    requests = job.count * clients
    cpu_ms = (server_cpu_seconds(master_pid) - cpu_before) * 1000 / requests
    redis_cpu_ms = (redis_cpu_seconds(redis_url) - redis_before) * 1000 / requests
    rate = peak.rps / 2
    paced_job = Job(**{**job.__dict__, "count": max(50, int(rate * paced_s / clients))})
    paced = phase([Job(**{**paced_job.__dict__, "interval_s": clients / rate})] * clients)
    return Measurement(peak, paced, cpu_ms, redis_cpu_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=None, help="gunicorn workers (default: the Procfile's)"
    )
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--requests", type=int, default=4000, help="requests in the peak phase")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of bare, limit, webhook")
    parser.add_argument("--repeat", type=int, dest="rounds", help="same as --rounds")
    parser.add_argument("--profile", action="store_true", help="profile the request path instead")
    parser.add_argument("--profile-count", type=int, default=2000, help="deliveries per step")
    parser.add_argument("--json-out", help="write the figures here (JSON)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
        directory = Path(tmp)
        (directory / "redis").mkdir()
        identity = make_identity()
        host = CertificateHost(directory).start()
        host.routes[CERT_PATH] = Route(identity.certificate_pem)
        try:
            with EmbeddedRedis(directory / "redis") as redis_server:
                env = webhook_env(redis_server.url, host, directory)
                limit = limit_env(env, identity, directory)
                if args.profile:
                    profile(env, limit, identity, host, args)
                else:
                    compare(env, limit, identity, host, args)
        finally:
            host.stop()


def limit_env(env: dict[str, str], identity: Identity, directory: Path) -> dict[str, str]:
    """The limit app's environment: Redis, target URL, the certificate and the real message."""
    from core.broker import publisher
    from core.settings import load_settings
    from webhook.messages import ArchiveMessages

    os.environ.setdefault("SSL_CERT_FILE", env["SSL_CERT_FILE"])
    settings = load_settings(redis_url=env["REDIS_URL"])
    sentinel = "benchSENTINELtaskid"  # the first occurrence becomes the mark (one splice)
    message = ArchiveMessages(publisher(settings)).render(sentinel)
    (directory / "message.txt").write_text(message.replace(sentinel, TASK_ID_MARK, 1))
    (directory / "cert.pem").write_bytes(identity.certificate_pem)
    return {
        "REDIS_URL": env["REDIS_URL"],
        "WEBHOOK_PUBLIC_URL": env["WEBHOOK_PUBLIC_URL"],
        "LIMIT_CERT_FILE": str(directory / "cert.pem"),
        "LIMIT_MESSAGE_FILE": str(directory / "message.txt"),
    }


def webhook_env(redis_url: str, host: CertificateHost, directory: Path) -> dict[str, str]:
    """The webhook's environment: Redis, broker, target URL, trusted local certificate host."""
    (directory / "prometheus").mkdir()
    return {
        "REDIS_URL": redis_url,
        "WEBHOOK_PUBLIC_URL": "https://hooks.example.test" + TARGET_PATH,
        "EVENTBRIDGE_CERT_URL_REGEX": rf"https://127\.0\.0\.1:{host.port}/certs/[a-z0-9-]+\.pem",
        "SSL_CERT_FILE": str(host.ca_file),
        "PROMETHEUS_MULTIPROC_DIR": str(directory / "prometheus"),
        "LOG_FORMAT": "json",
    }


SERVERS = {
    "bare": "tests.benchmarks.webhook_bench:create_bare_app()",
    "limit": "tests.benchmarks.limit_app:create_limit_app()",
    "webhook": "webhook.wsgi:app",  # the Procfile's entrypoint (it freezes the GC)
}


def compare(
    env: dict[str, str],
    limit: dict[str, str],
    identity: Identity,
    host: CertificateHost,
    args: argparse.Namespace,
) -> None:
    """Run the three servers in turn, ``args.rounds`` times; print the table and figures."""
    pem = (identity.private_key_pem, identity.certificate_pem)
    command = WebCommand.from_procfile(args.workers)
    rows: list[tuple[str, Measurement]] = []
    redis_url = env["REDIS_URL"]
    envs = {"bare": {}, "limit": limit, "webhook": env}
    for _ in range(args.rounds):
        for name, ref in SERVERS.items():
            with Stack(sink=lambda _line: None, handle_signals=False) as stack:
                port = free_port()
                child_env = envs[name] | {"PYTHONPATH": str(REPO_ROOT)}
                web = stack.start(gunicorn_spec(name, ref, port, child_env, command))
                cert_url, target = host.url(CERT_PATH), env["WEBHOOK_PUBLIC_URL"]
                job = Job(port, args.requests // args.clients, pem, cert_url, target)
                figures = measure(web.pid, port, job, args.clients, args.paced_seconds, redis_url)
                rows.append((name, figures))
    report(rows, args, command)


def report(
    rows: list[tuple[str, Measurement]], args: argparse.Namespace, command: WebCommand
) -> None:
    """Print one line per server and round, then the figures (medians over rounds)."""
    print(f"gunicorn (Procfile web): {command.describe()}")
    print(f"{args.clients} client processes; {os.cpu_count()} CPUs shared by all")
    head = f"{'':9}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'CPU ms/req':>11}{'Redis':>6}"
    head += f"{'errors':>7}"
    print(f"{head}  | at half peak:{'req/s':>6}{'p50 ms':>8}{'p99 ms':>8}")
    for name, m in rows:
        peak, paced = m.peak, m.paced
        row = f"{name:9}{peak.rps:7.0f}{peak.p50_ms:8.2f}{peak.p99_ms:8.2f}{m.cpu_ms:11.3f}"
        row += f"{m.redis_cpu_ms:6.3f}"
        row += f"{peak.errors + paced.errors:7d}  | {'':13}{paced.rps:6.0f}"
        print(f"{row}{paced.p50_ms:8.2f}{paced.p99_ms:8.2f}")

    def values(name: str, value: Callable[[Measurement], float]) -> tuple[float, ...]:
        return tuple(value(m) for n, m in rows if n == name)

    def median(name: str, value: Callable[[Measurement], float]) -> float:
        return median_of(values(name, value))

    ratios = tuple(
        w.peak.rps / lim.peak.rps
        for (_, w), (_, lim) in zip(
            [r for r in rows if r[0] == "webhook"],
            [r for r in rows if r[0] == "limit"],
            strict=True,
        )
    )
    ratio = median("webhook", lambda m: m.peak.rps) / median("limit", lambda m: m.peak.rps)
    cpu_gap = median("webhook", lambda m: m.cpu_ms) - median("bare", lambda m: m.cpu_ms)
    errors = sum(m.peak.errors + m.paced.errors for _, m in rows)
    figures = [
        Figure(
            "webhook peak req/s vs the limit",
            ratio,
            "x",
            ">=",
            0.9,
            f"webhook {median('webhook', lambda m: m.peak.rps):.0f}, "
            f"limit {median('limit', lambda m: m.peak.rps):.0f}, "
            f"bare {median('bare', lambda m: m.peak.rps):.0f} req/s",
            ratios,
        ),
        Figure(
            "webhook p99 at half peak",
            median("webhook", lambda m: m.paced.p99_ms),
            "ms",
            "<",
            25,
            f"at {median('webhook', lambda m: m.paced.rps):.0f} req/s",
            values("webhook", lambda m: m.paced.p99_ms),
        ),
        Figure(
            "webhook server CPU per delivery over bare",
            cpu_gap,
            "ms",
            "<=",
            0.25,
            f"webhook {median('webhook', lambda m: m.cpu_ms):.3f}, "
            f"limit {median('limit', lambda m: m.cpu_ms):.3f}, "
            f"bare {median('bare', lambda m: m.cpu_ms):.3f} ms/req; Redis: webhook "
            f"{median('webhook', lambda m: m.redis_cpu_ms):.3f}, limit "
            f"{median('limit', lambda m: m.redis_cpu_ms):.3f} ms/req",
            tuple(
                w - b
                for w, b in zip(
                    values("webhook", lambda m: m.cpu_ms),
                    values("bare", lambda m: m.cpu_ms),
                    strict=True,
                )
            ),
        ),
    ]
    if errors:
        print(f"WARNING: {errors} non-200 answers")
    details = {
        "gunicorn": command.describe(),
        "clients": args.clients,
        "errors": errors,
        "rows": [{"server": n, **asdict(m)} for n, m in rows],
    }
    write_figures(args.json_out, "webhook", figures, details)


def profile(
    env: dict[str, str],
    limit: dict[str, str],
    identity: Identity,
    host: CertificateHost,
    args: argparse.Namespace,
) -> None:
    """Attribute the webhook's per-delivery CPU to steps, against the limit and bare Flask.

    In-process, with real Redis, GC frozen as ``webhook/wsgi.py`` does. Whole requests go
    through each app's WSGI callable with pre-built environs (what gunicorn hands the app;
    gunicorn's own HTTP parsing, the same for all three apps, is left out): CPU µs of this
    process and of Redis per request. Then the webhook again with each step of its view
    wrapped in a CPU timer, in place (the functions the view calls, patched on the module
    and on the app's collaborators): what is left is Flask, werkzeug and the view's glue.
    Then the webhook's whole requests under cProfile.
    """
    from core.settings import load_settings
    from webhook import create_app

    os.environ["SSL_CERT_FILE"] = env["SSL_CERT_FILE"]
    app = create_app(
        load_settings(**{k.lower(): v for k, v in env.items() if k != "SSL_CERT_FILE"})
    )
    signer = Signer(identity, host.url(CERT_PATH), env["WEBHOOK_PUBLIC_URL"])
    count = args.profile_count
    redis_client = redis.Redis.from_url(env["REDIS_URL"])
    saved, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115  # mute log lines
    try:
        wholes = whole_requests(app, limit, signer, count, redis_client)
        steps, timed_whole = webhook_steps(app, signer, count, redis_client)
    finally:
        sys.stdout.close()
        sys.stdout = saved
    print_profile(steps, timed_whole, wholes, count)
    whole_request_cprofile(app, signer, count)


class StepTimer:
    """CPU seconds spent inside wrapped callables, by step name (nested steps count in both)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` with its CPU time added to step ``name``."""
        self.cpu.setdefault(name, 0.0)

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.cpu[name] += time.process_time() - started

        return timed_call


def webhook_steps(
    app: Any, signer: Signer, count: int, redis_client: redis.Redis
) -> tuple[dict[str, tuple[float, float]], tuple[float, float]]:
    """Per-step CPU µs of the webhook's deliveries, measured in place; and the timed whole."""
    from unittest import mock

    from webhook import views
    from webhook.views import EXTENSION

    hook = app.extensions[EXTENSION]
    timer = StepTimer()
    intake = hook.intake
    patches = [
        mock.patch.object(views, "_read_body", timer.wrap("body read", views._read_body)),
        mock.patch.object(views, "verify_delivery", timer.wrap("signature", views.verify_delivery)),
        mock.patch.object(views, "parse_envelope", timer.wrap("parse", views.parse_envelope)),
        mock.patch.object(intake, "take", timer.wrap("intake (all)", intake.take)),
        mock.patch.object(
            intake._messages, "render", timer.wrap("message render", intake._messages.render)
        ),
        mock.patch.object(
            intake._store,
            "claim_enqueued",
            timer.wrap("intake script", intake._store.claim_enqueued),
        ),
        mock.patch.object(views, "log", mock.Mock(info=timer.wrap("log line", views.log.info))),
        mock.patch.object(hook.metrics, "observe", timer.wrap("metrics", hook.metrics.observe)),
        mock.patch.object(views, "jsonify", timer.wrap("JSON answer", views.jsonify)),
    ]
    for patch in patches:
        patch.start()
    try:
        timed_whole = timed(call_wsgi(app), environs(signer, count), redis_client)
    finally:
        for patch in patches:
            patch.stop()
    cpu = {name: seconds / count * 1e6 for name, seconds in timer.cpu.items()}
    cpu["intake glue (take)"] = (
        cpu.pop("intake (all)") - cpu["message render"] - cpu["intake script"]
    )
    steps = {name: (value, 0.0) for name, value in cpu.items()}
    steps["intake script"] = (cpu["intake script"], timed_whole[1])
    return steps, timed_whole


def environs(signer: Signer, count: int) -> list[tuple[Any, None, None]]:
    """``count`` fresh signed deliveries as WSGI environs (built before any timing)."""
    from werkzeug.test import EnvironBuilder

    out = []
    for _ in range(count):
        body, headers, _task = signed(signer)
        builder = EnvironBuilder(
            path=TARGET_PATH,
            method="POST",
            data=body,
            headers={**headers, "Content-Type": "application/json"},
        )
        out.append((builder.get_environ(), None, None))
    return out


def call_wsgi(wsgi: Any) -> Callable[[Any, object, object], object]:
    """A step that calls ``wsgi`` with one environ and requires a 200."""

    def run(environ: Any, _: object, __: object) -> object:
        status: list[str] = []
        body = b"".join(wsgi(environ, lambda s, h, e=None: status.append(s)))
        if not status[0].startswith("200"):
            raise RuntimeError(f"{status[0]}: {body[:200]!r}")
        return body

    return run


def timed(
    step: Callable[[bytes, dict[str, str], str], object],
    deliveries: list[tuple[bytes, dict[str, str], str]],
    redis_client: redis.Redis,
) -> tuple[float, float]:
    """(this process's CPU µs, Redis CPU µs) per delivery of ``step``."""
    redis_before = redis_cpu_seconds_of(redis_client)
    cpu = time.process_time()
    for delivery in deliveries:
        step(*delivery)
    cpu = time.process_time() - cpu
    redis_cpu = redis_cpu_seconds_of(redis_client) - redis_before
    return cpu / len(deliveries) * 1e6, redis_cpu / len(deliveries) * 1e6


def redis_cpu_seconds_of(client: redis.Redis) -> float:
    """Redis server CPU seconds so far (``INFO cpu``)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def whole_requests(
    app: Any, limit: dict[str, str], signer: Signer, count: int, redis_client: redis.Redis
) -> dict[str, tuple[float, float]]:
    """CPU µs per whole request (this process, Redis) of bare, limit and webhook, as WSGI."""
    apps = {
        "bare": create_bare_app(),
        "limit": create_limit_app(
            limit["REDIS_URL"],
            limit["WEBHOOK_PUBLIC_URL"],
            limit["LIMIT_CERT_FILE"],
            limit["LIMIT_MESSAGE_FILE"],
        ),
        "webhook": app,
    }
    results = {}
    for name, wsgi in apps.items():
        deliveries = environs(signer, count + 1)
        call_wsgi(wsgi)(*deliveries.pop())  # warm: certificate fetch, connections
        gc.collect()
        gc.freeze()  # as webhook/wsgi.py does under gunicorn: collections skip what is built
        results[name] = timed(call_wsgi(wsgi), deliveries, redis_client)  # type: ignore[arg-type]
    return results


def print_profile(
    steps: dict[str, tuple[float, float]],
    timed_whole: tuple[float, float],
    wholes: dict[str, tuple[float, float]],
    count: int,
) -> None:
    """The per-step table and the gap to the limit.

    Each timed step carries the timer's own cost (two ``process_time`` calls, a few µs): the
    difference between the timed and the untimed whole request.
    """
    print(f"{'one webhook delivery, step':34}{'CPU us':>9}{'Redis us':>10}   ({count} each)")
    for name, (cpu, redis_us) in steps.items():
        print(f"{name:34}{cpu:9.0f}{redis_us:10.0f}")
    rest = timed_whole[0] - sum(cpu for cpu, _ in steps.values())
    print(f"{'Flask/werkzeug + view glue (rest)':34}{rest:9.0f}")
    print(f"{'= whole, steps timed':34}{timed_whole[0]:9.0f}")
    untimed, untimed_redis = wholes["webhook"]
    print(f"{'webhook whole request, untimed':34}{untimed:9.0f}{untimed_redis:10.0f}")
    for name in ("limit", "bare"):
        print(f"{name + ' whole request':34}{wholes[name][0]:9.0f}{wholes[name][1]:10.0f}")
    gap = wholes["webhook"][0] - wholes["limit"][0]
    print(f"gap webhook - limit: {gap:.0f} us CPU per delivery (WSGI; gunicorn not included)")
    document = {"steps": steps, "rest": rest, "whole": wholes, "count": count}
    print("PROFILE_JSON " + json.dumps(document))


def signed(signer: Signer) -> tuple[bytes, dict[str, str], str]:
    """A fresh delivery: body, signed headers, task id."""
    task_id = f"profile-{uuid.uuid4()}"
    body = event_body(task_id)
    return body, signer.headers(body), task_id


def whole_request_cprofile(app: Any, signer: Signer, count: int) -> None:
    """cProfile whole webhook requests through its WSGI callable; the top functions by
    cumulative and by own time."""
    import cProfile
    import pstats

    from werkzeug.test import EnvironBuilder

    environs = []
    for _ in range(count):
        body, headers, _task = signed(signer)
        builder = EnvironBuilder(
            path=TARGET_PATH,
            method="POST",
            data=body,
            headers={**headers, "Content-Type": "application/json"},
        )
        environs.append(builder.get_environ())
    saved, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115  # mute delivery lines
    profiler = cProfile.Profile(time.process_time)  # CPU time, as the table above
    try:
        profiler.enable()
        for environ in environs:
            b"".join(app(environ, lambda *_args: None))
        profiler.disable()
    finally:
        sys.stdout.close()
        sys.stdout = saved
    print("webhook whole requests (WSGI) under cProfile, CPU time, by cumulative time:")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
    print("by own time:")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
