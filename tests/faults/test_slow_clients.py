"""Slow clients against the Procfile's ``web`` process: deliveries still answered, clients cut off.

The fault (an outside tester's finding): with sync workers, a few connections that send their
headers and then a body byte every 2 s each hold a worker, and real deliveries and ``/livez``
go unanswered. These tests run the Procfile's command line itself, at its defaults, with real
Redis and real signed deliveries, and time every answer.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from tests.faults.conftest import StartProxy, StartWeb
from tests.faults.slow_clients import SlowClients, status_of
from tests.support.eventbridge_signer import Signer
from tests.webhook.conftest import archive_messages, event_body
from webhook.gunicorn_conf import BODY_READ_DEADLINE_SECONDS

pytestmark = pytest.mark.e2e

SLOW_CLIENTS = 200
DELIVERIES = 10
ANSWER_WITHIN_S = 5.0
CUT_SLACK_S = 3.0  # the drip interval (2 s) plus scheduling on a loaded machine


def timed_delivery(url: str, signer: Signer, task_id: str) -> tuple[int | None, float]:
    """POST one signed delivery; (status or None on timeout, seconds to the answer)."""
    body = event_body(task_id)
    started = time.monotonic()
    try:
        response = httpx.post(
            f"{url}/callbacks/eventbridge",
            content=body,
            headers=signer.headers(body),
            timeout=ANSWER_WITHIN_S,
        )
    except httpx.TimeoutException:
        return None, time.monotonic() - started
    return response.status_code, time.monotonic() - started


def timed_get(url: str) -> tuple[int | None, float]:
    """GET ``url``; (status or None on timeout, seconds to the answer)."""
    started = time.monotonic()
    try:
        status: int | None = httpx.get(url, timeout=ANSWER_WITHIN_S).status_code
    except httpx.TimeoutException:
        status = None
    return status, time.monotonic() - started


def deliver_past_slow_clients(url: str, signer: Signer, redis_client: redis.Redis) -> None:
    """With 200 slow clients on ``url``: 10 of 10 deliveries and /livez answered within 5 s."""
    port = int(url.rsplit(":", 1)[1])
    slow = SlowClients(port, count=SLOW_CLIENTS, duration_s=30).start()
    try:
        time.sleep(2.5)  # every slow client is past its headers and dripping its body
        with ThreadPoolExecutor(DELIVERIES) as pool:
            answers = list(
                pool.map(lambda n: timed_delivery(url, signer, f"slow-{n}"), range(DELIVERIES))
            )
        livez = timed_get(f"{url}/livez")
        still_open = slow.open_count
    finally:
        slow.stop()
    times = ", ".join(f"{seconds:.2f}" for _, seconds in answers)
    print(f"\n{SLOW_CLIENTS} slow clients ({still_open} still connected): deliveries {times} s;")
    print(f"/livez {livez[0]} in {livez[1]:.2f} s")
    assert still_open >= SLOW_CLIENTS * 0.9, "the slow clients were cut off before the deliveries"
    assert [status for status, _ in answers] == [200] * DELIVERIES
    assert max(seconds for _, seconds in answers) < ANSWER_WITHIN_S
    assert livez[0] == 200 and livez[1] < ANSWER_WITHIN_S
    assert len(archive_messages(redis_client)) == DELIVERIES


def test_deliveries_answered_with_200_slow_clients_connected(
    start_web: StartWeb, redis_url: str, redis_client: redis.Redis, signer: Signer
) -> None:
    """200 slow clients on the Procfile's web: 10 of 10 deliveries get 200 within 5 s each."""
    web = start_web(redis_url)
    deliver_past_slow_clients(web.spec.url, signer, redis_client)


def test_deliveries_answered_through_nginx_with_200_slow_clients(
    start_web: StartWeb,
    start_proxy: StartProxy,
    redis_url: str,
    redis_client: redis.Redis,
    signer: Signer,
) -> None:
    """deploy/nginx in front of the Procfile's web, 200 slow clients on nginx: 10 of 10 in 5 s."""
    proxy = start_proxy(start_web(redis_url))
    deliver_past_slow_clients(proxy.spec.url, signer, redis_client)


def test_slow_clients_are_cut_off_at_the_body_read_deadline(
    start_web: StartWeb, redis_url: str
) -> None:
    """A body still unfinished at the read deadline gets 408 and its connection is closed."""
    web = start_web(redis_url)
    port = int(web.spec.url.rsplit(":", 1)[1])
    limit_s = BODY_READ_DEADLINE_SECONDS + CUT_SLACK_S
    slow = SlowClients(port, count=SLOW_CLIENTS, duration_s=limit_s + 5).start()
    try:
        all_cut = slow.wait_all_cut(timeout_s=limit_s + 2)
    finally:
        slow.stop()
    cut_times = sorted(client.cut_after_s or 0.0 for client in slow.cut_off())
    statuses = {status_of(client.answer) for client in slow.cut_off()}
    print(f"\ncut off: {len(cut_times)} of {SLOW_CLIENTS}, after {cut_times[0]:.2f} to", end=" ")
    print(f"{cut_times[-1]:.2f} s (deadline {BODY_READ_DEADLINE_SECONDS} s); answers {statuses}")
    assert all_cut, f"{slow.open_count} slow clients still connected after {limit_s} s"
    assert cut_times[0] >= BODY_READ_DEADLINE_SECONDS - 0.5
    assert cut_times[-1] <= limit_s
    assert statuses == {408}
    assert httpx.get(f"{web.spec.url}/livez", timeout=ANSWER_WITHIN_S).status_code == 200
