"""Benchmark: the webhook against a bare Flask endpoint, both under the same gunicorn settings.

Run by ``make bench`` (``python tests/benchmarks/webhook_bench.py``). It starts an embedded
Redis (AOF on, ``appendfsync everysec``: the durability of ``deploy/docker-compose.yml``), an
HTTPS certificate host, and gunicorn twice with identical flags: (a) a Flask app that answers 200
to any POST, (b) ``webhook.wsgi:app``, the Procfile's entrypoint, with real signatures (v2),
unique ``task_id``\\ s, real Redis and the default intake (broker = ``REDIS_URL``: claim and
``LPUSH`` of the Celery message in one Lua script, :mod:`webhook.intake`). Client processes send
pre-signed raw HTTP/1.1 requests, first closed-loop (peak requests/s), then open-loop at half
the peak rate (latency measured from each request's scheduled send time). It prints
requests/s, p50 and p99 for both, CPU per request of the gunicorn workers and of Redis, and the
ratio (b)/(a). Targets (issue 2): ratio >= 0.8, p99 < 25 ms at half the peak rate.
``--profile`` profiles the webhook's request path in-process instead: each step of both intake
paths (one round trip; claim → ``send_task`` → mark), then whole requests under cProfile.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
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
    name: str, app_ref: str, port: int, env: dict[str, str], workers: int
) -> ChildSpec:
    """gunicorn with the same flags for both apps (sync workers, as in the Procfile)."""
    argv = [script("gunicorn"), app_ref, "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    argv += ["--worker-class", "sync", "--timeout", "30", "--log-level", "warning"]
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
    """CPU time (user + system, seconds) used so far by gunicorn's worker processes (Linux)."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    ticks = 0
    for pid in children:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


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
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (Procfile: 4)")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--requests", type=int, default=4000, help="requests in the peak phase")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternate bare/webhook runs")
    parser.add_argument("--profile", action="store_true", help="profile the request path instead")
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
                if args.profile:
                    profile(env, identity, host)
                else:
                    compare(env, identity, host, args)
        finally:
            host.stop()


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
    "webhook": "webhook.wsgi:app",  # the Procfile's entrypoint (it freezes the GC)
}


def compare(
    env: dict[str, str], identity: Identity, host: CertificateHost, args: argparse.Namespace
) -> None:
    """Run both servers in turn, ``args.rounds`` times, and print the table and the ratio."""
    pem = (identity.private_key_pem, identity.certificate_pem)
    rows: list[tuple[str, Measurement]] = []
    redis_url = env["REDIS_URL"]
    for _ in range(args.rounds):
        for name, ref in SERVERS.items():
            with Stack(sink=lambda _line: None, handle_signals=False) as stack:
                port = free_port()
                child_env = (env if name == "webhook" else {}) | {"PYTHONPATH": str(REPO_ROOT)}
                web = stack.start(gunicorn_spec(name, ref, port, child_env, args.workers))
                cert_url, target = host.url(CERT_PATH), env["WEBHOOK_PUBLIC_URL"]
                job = Job(port, args.requests // args.clients, pem, cert_url, target)
                figures = measure(web.pid, port, job, args.clients, args.paced_seconds, redis_url)
                rows.append((name, figures))
    report(rows, args)


def report(rows: list[tuple[str, Measurement]], args: argparse.Namespace) -> None:
    """Print one line per run and the median ratio of peak requests/s (webhook / bare)."""
    print(f"gunicorn: {args.workers} sync workers; {args.clients} client processes;", end=" ")
    print(f"{os.cpu_count()} CPUs shared by servers, clients and Redis")
    head = f"{'':9}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'CPU ms/req':>11}{'Redis':>6}"
    head += f"{'errors':>7}"
    print(f"{head}  | at half peak:{'req/s':>6}{'p50 ms':>8}{'p99 ms':>8}")
    for name, m in rows:
        peak, paced = m.peak, m.paced
        row = f"{name:9}{peak.rps:7.0f}{peak.p50_ms:8.2f}{peak.p99_ms:8.2f}{m.cpu_ms:11.2f}"
        row += f"{m.redis_cpu_ms:6.2f}"
        row += f"{peak.errors + paced.errors:7d}  | {'':13}{paced.rps:6.0f}"
        print(f"{row}{paced.p50_ms:8.2f}{paced.p99_ms:8.2f}")

    def median(name: str, value: Callable[[Measurement], float]) -> float:
        return statistics.median(value(m) for n, m in rows if n == name)

    ratio = median("webhook", lambda m: m.peak.rps) / median("bare", lambda m: m.peak.rps)
    print(f"ratio webhook/bare, median peak req/s: {ratio:.2f} (target >= 0.8)")
    bare_cpu, hook_cpu = median("bare", lambda m: m.cpu_ms), median("webhook", lambda m: m.cpu_ms)
    print(
        f"server CPU per request (median): bare {bare_cpu:.2f} ms, webhook {hook_cpu:.2f} ms",
        end="",
    )
    print(f" (+ Redis {median('webhook', lambda m: m.redis_cpu_ms):.2f} ms)")


def profile(env: dict[str, str], identity: Identity, host: CertificateHost) -> None:
    """Time each step of the request path in-process (real Redis and Celery), then cProfile it.

    Prints mean wall and CPU microseconds per step: verify, parse, then the one-round-trip
    intake (render the message, claim + push) and the publishing one (claim, publish, mark).
    """
    from core.settings import load_settings
    from core.store import ReceiptStore
    from webhook import create_app
    from webhook.admission import parse_envelope
    from webhook.intake import archive_publisher
    from webhook.messages import ArchiveMessages
    from webhook.signature import verify_delivery
    from webhook.views import EXTENSION

    os.environ["SSL_CERT_FILE"] = env["SSL_CERT_FILE"]
    app = create_app(
        load_settings(**{k.lower(): v for k, v in env.items() if k != "SSL_CERT_FILE"})
    )
    hook = app.extensions[EXTENSION]
    store = ReceiptStore(hook.redis, 3600)
    publish = archive_publisher(hook.celery)
    messages = ArchiveMessages(hook.celery)
    signer = Signer(identity, host.url(CERT_PATH), env["WEBHOOK_PUBLIC_URL"])
    deliveries = [signed(signer) for _ in range(PROFILE_COUNT)]

    def verify(headers: dict[str, str], body: bytes) -> object:
        target, now_ms = env["WEBHOOK_PUBLIC_URL"], int(time.time() * 1000)
        return verify_delivery(
            headers, body, target_url=target, keys=hook.keys, now_ms=now_ms, max_skew_ms=60_000
        )

    steps: dict[str, Callable[[bytes, dict[str, str], str], object]] = {
        "verify (RSA, cached key)": lambda b, h, _: verify(h, b),
        "parse event JSON": lambda b, _, __: parse_envelope(b),
        "render archive message": lambda _, __, t: messages.render(t),
        "claim + LPUSH (Lua, 1 trip)": lambda b, _, t: store.claim_enqueued(
            "a" + t, b, queue_key=messages.queue_key, message=messages.render(t)
        ),
        "fallback: claim (Lua, 1 trip)": lambda b, _, t: store.claim(t, b),
        "fallback: celery.send_task": lambda _, __, t: publish(t),
        "fallback: mark_enqueued (Lua)": lambda _, __, t: store.mark_enqueued(t),
    }
    steps["verify (RSA, cached key)"](*deliveries[0])  # warm: certificate fetch, connections
    steps["fallback: celery.send_task"](*deliveries[0])
    print(f"{'step':32}{'wall us':>10}{'CPU us':>10}   ({PROFILE_COUNT} deliveries)")
    for name, step in steps.items():
        wall, cpu = time.perf_counter(), time.process_time()
        for delivery in deliveries:
            step(*delivery)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{name:32}{wall / PROFILE_COUNT * 1e6:10.0f}{cpu / PROFILE_COUNT * 1e6:10.0f}")
    whole_request(app.test_client(), signer)


PROFILE_COUNT = 2000


def signed(signer: Signer) -> tuple[bytes, dict[str, str], str]:
    """A fresh delivery: body, signed headers, task id."""
    task_id = f"profile-{uuid.uuid4()}"
    body = event_body(task_id)
    return body, signer.headers(body), task_id


def whole_request(client: Any, signer: Signer) -> None:
    """cProfile whole requests through Flask's test client; print the top functions."""
    import cProfile
    import pstats

    deliveries = [signed(signer) for _ in range(PROFILE_COUNT)]
    saved, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115  # mute delivery lines
    profiler = cProfile.Profile()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        profiler.enable()
        for body, headers, _ in deliveries:
            client.post(TARGET_PATH, data=body, headers=headers)
        profiler.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        sys.stdout.close()
        sys.stdout = saved
    per_wall, per_cpu = wall / PROFILE_COUNT * 1e6, cpu / PROFILE_COUNT * 1e6
    print(f"{'whole request (under cProfile)':32}{per_wall:10.0f}{per_cpu:10.0f}")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
