"""The webhook under real gunicorn, over real HTTP: concurrency, multi-process metrics, faults."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from asr_ingest.embedded import EmbeddedRedis
from asr_ingest.stack import Child, Stack
from asr_ingest.starters import free_port, script, webhook_spec
from core.store import PENDING_KEY
from tests.support.eventbridge_signer import CertificateHost, Signer
from tests.webhook.conftest import TARGET_URL, archive_messages, cert_url_regex, event_body

pytestmark = pytest.mark.e2e

StartWebhook = Callable[..., Child]


@pytest.fixture
def start_webhook(cert_host: CertificateHost, tmp_path: Path) -> Iterator[StartWebhook]:
    """Starts ``gunicorn webhook.wsgi:app`` (2 sync workers) for a Redis URL; stops it after."""
    lines: list[str] = []
    stack = Stack(sink=lines.append, handle_signals=False, grace_s=5)

    def start(redis_url: str, **env: str) -> Child:
        metrics_dir = tmp_path / "prometheus"
        metrics_dir.mkdir(exist_ok=True)
        full = {
            "REDIS_URL": redis_url,
            "WEBHOOK_PUBLIC_URL": TARGET_URL,
            "EVENTBRIDGE_CERT_URL_REGEX": cert_url_regex(cert_host),
            "SSL_CERT_FILE": str(cert_host.ca_file),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "LOG_FORMAT": "json",
            **env,
        }
        return stack.start(webhook_spec(free_port(), full, workers=2))

    yield start
    stack.stop_all()


def deliver(url: str, signer: Signer, body: bytes) -> httpx.Response:
    """POST one freshly signed delivery of ``body`` over HTTP."""
    headers = signer.headers(body)
    return httpx.post(f"{url}/callbacks/eventbridge", content=body, headers=headers, timeout=10)


def test_fifty_parallel_deliveries_leave_one_message(
    start_webhook: StartWebhook, redis_url: str, redis_client: redis.Redis, signer: Signer
) -> None:
    """50 simultaneous deliveries of one event: one accepted, 49 duplicates, one archive message."""
    web = start_webhook(redis_url)
    body = event_body("task-parallel")
    barrier = threading.Barrier(50)
    answers: list[str] = []

    def one() -> None:
        headers = signer.headers(body)
        barrier.wait()
        response = httpx.post(
            f"{web.spec.url}/callbacks/eventbridge", content=body, headers=headers, timeout=20
        )
        answers.append(f"{response.status_code} {response.json().get('status')}")

    threads = [threading.Thread(target=one) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(answers) == {"200 accepted": 1, "200 duplicate": 49}
    assert archive_messages(redis_client) == [
        {"task": "asr_ingest.archive", "args": ["task-parallel"], "kwargs": {}}
    ]
    metrics = httpx.get(f"{web.spec.url}/metrics").text
    assert 'webhook_deliveries_total{outcome="accepted",reason=""} 1.0' in metrics
    assert 'webhook_deliveries_total{outcome="duplicate",reason=""} 49.0' in metrics


def test_chunked_oversized_body_is_413(
    start_webhook: StartWebhook, redis_url: str, redis_client: redis.Redis, signer: Signer
) -> None:
    """A chunked body (no Content-Length) that outgrows WEBHOOK_MAX_BODY_BYTES gets 413."""
    web = start_webhook(redis_url, WEBHOOK_MAX_BODY_BYTES="4096")
    body = event_body("task-big", padding="x" * 10_000)
    headers = signer.headers(body)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    response = httpx.post(
        f"{web.spec.url}/callbacks/eventbridge", content=chunks(), headers=headers, timeout=10
    )
    assert response.status_code == 413
    assert not redis_client.keys("asr:receipt:*")


def test_redis_stopped_then_back(
    start_webhook: StartWebhook, private_redis: EmbeddedRedis, signer: Signer
) -> None:
    """Redis stopped mid-run: 503, nothing claimed; Redis back: the retried delivery is accepted."""
    web = start_webhook(private_redis.url)
    client = redis.Redis.from_url(private_redis.url)
    assert deliver(web.spec.url, signer, event_body("before")).json()["status"] == "accepted"
    body = event_body("during")
    private_redis.stop()
    response = deliver(web.spec.url, signer, body)
    assert (response.status_code, response.json()) == (503, {"error": "redis_unavailable"})
    assert httpx.get(f"{web.spec.url}/readyz").status_code == 503
    private_redis.start()
    assert not client.exists("asr:receipt:during") and client.zcard(PENDING_KEY) == 0
    retried = deliver(web.spec.url, signer, body)
    assert (retried.status_code, retried.json()["status"]) == (200, "accepted")
    assert sorted(m["args"][0] for m in archive_messages(client)) == ["before", "during"]
    client.close()


def raw_exchange(url: str, request: bytes, *, half_close: bool = False) -> bytes:
    """Send ``request`` bytes over one TCP connection and read the answer until it closes."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                break
    return answer


def chunked_request(body_chunks: bytes, signer: Signer, body: bytes) -> bytes:
    """A POST with ``Transfer-Encoding: chunked`` whose framing is ``body_chunks`` as given."""
    head = "POST /callbacks/eventbridge HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in signer.headers(body).items())
    return head.encode() + b"\r\n" + body_chunks


@pytest.mark.parametrize(
    ("framing", "half_close"),
    [
        (lambda body: b"zz\r\n" + body + b"\r\n0\r\n\r\n", False),  # bad chunk size
        (lambda body: b"%x\r\n" % (len(body) + 100) + body, True),  # truncated, then EOF
        (lambda body: b"%x\r\n" % len(body) + body + b"XX0\r\n\r\n", False),  # no CRLF
    ],
    ids=["bad-size", "truncated", "no-terminator"],
)
def test_malformed_chunked_body_is_400(
    start_webhook: StartWebhook,
    redis_url: str,
    redis_client: redis.Redis,
    signer: Signer,
    framing: Callable[[bytes], bytes],
    half_close: bool,
) -> None:
    """Broken chunk framing is client garbage: 400 bad_request, never a 5xx, nothing stored."""
    web = start_webhook(redis_url)
    body = event_body("task-chunk")
    answer = raw_exchange(
        web.spec.url, chunked_request(framing(body), signer, body), half_close=half_close
    )
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split(b" ")[1] == b"400", answer
    assert rest.endswith(b'{"error":"bad_request"}\n'), answer
    assert not redis_client.keys("asr:receipt:*")
    metrics = httpx.get(f"{web.spec.url}/metrics").text
    assert 'webhook_deliveries_total{outcome="rejected",reason="bad_request"} 1.0' in metrics


def test_gunicorn_without_public_url_stops_with_one_line(tmp_path: Path) -> None:
    """Without WEBHOOK_PUBLIC_URL gunicorn stops ("App failed to load"), naming the variable
    in one line of its own, and no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "WEBHOOK_PUBLIC_URL"}
    argv = [script("gunicorn"), "webhook.wsgi:app", "--bind", f"127.0.0.1:{free_port()}"]
    done = subprocess.run(
        argv, env={**env, "LOG_FORMAT": "json"}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if "WEBHOOK_PUBLIC_URL" in line]
    assert len(ours) == 1 and ours[0].startswith("asr-ingest webhook: configuration error:")
    assert "Traceback" not in done.stderr
