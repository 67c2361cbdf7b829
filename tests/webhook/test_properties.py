"""Property tests (hypothesis): whatever arrives, never a 5xx and never an unsigned enqueue."""

from __future__ import annotations

import base64
import json
import time

import redis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.eventbridge_signer import Signer
from tests.webhook.conftest import FINISH

CALLBACK = "/callbacks/eventbridge"
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NAMES = [
    "x-eventbridge-signature-timestamp",
    "x-eventbridge-signature-version",
    "x-eventbridge-signature-url",
    "x-eventbridge-signature-token",
    "x-eventbridge-hash-method",
    "x-eventbridge-signature-v2",
    "x-eventbridge-signature-method",
    "x-eventbridge-signature-secret",
    "x-eventbridge-signature",
]
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"))
base64_text = st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())
# Text with lone surrogates now and then ("\ud800"): JSON admits their escapes.
any_text = st.text(
    st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
)
envelopes = st.fixed_dictionaries(
    {
        "type": st.one_of(st.just(FINISH), any_text),
        "source": st.one_of(st.just("acs.dashscope"), any_text),
    },
    optional={"id": any_text, "aliyunaccountid": any_text},
)
data_fields = st.dictionaries(
    st.sampled_from(["task_id", "user_api_unique_key", "task_status", "contain_result", "x"]),
    st.one_of(any_text, st.just("paraformer-v2"), st.just("t-1"), st.integers(), st.none()),
)
bodies = st.one_of(
    st.binary(max_size=2000),
    st.builds(
        lambda envelope, data: json.dumps({**envelope, "data": data}).encode(),
        envelopes,
        data_fields,
    ),
)


def stored_nothing(client: redis.Redis) -> bool:
    """No receipt and no archive message exist."""
    return not client.keys("asr:receipt:*") and client.llen("archive") == 0


@PROPERTY
@given(data=st.data(), body=bodies)
def test_random_headers_never_enqueue(
    client: FlaskClient, signer: Signer, redis_client: redis.Redis, data: st.DataObject, body: bytes
) -> None:
    """Random EventBridge-looking headers (plausible or garbage) get a 4xx and store nothing."""
    plausible = {
        "x-eventbridge-signature-timestamp": st.just(str(int(time.time() * 1000))),
        "x-eventbridge-signature-url": st.just(signer.cert_url),
        "x-eventbridge-signature-v2": base64_text,
        "x-eventbridge-signature-secret": base64_text,
        "x-eventbridge-signature": base64_text,
    }
    headers = {}
    for name in data.draw(st.lists(st.sampled_from(NAMES), unique=True)):
        headers[name] = data.draw(st.one_of(plausible.get(name, header_text), header_text))
    response = client.post(CALLBACK, data=body, headers=headers)
    assert response.status_code in (401, 413), response.get_data()
    assert stored_nothing(redis_client)


@PROPERTY
@given(data=st.data(), body=bodies, version=st.sampled_from(["v1", "v2"]))
def test_tampered_deliveries_never_enqueue(
    client: FlaskClient,
    signer: Signer,
    redis_client: redis.Redis,
    data: st.DataObject,
    body: bytes,
    version: str,
) -> None:
    """A signed delivery with one flipped body byte or one changed signed header gets 401."""
    headers = signer.headers(body, version=version)
    if body and data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(body) - 1))
        flip = data.draw(st.integers(1, 255))
        body = body[:at] + bytes([body[at] ^ flip]) + body[at + 1 :]
    else:
        name = data.draw(
            st.sampled_from(sorted(n for n in headers if n != "X-Eventbridge-Signature-Url"))
        )
        old = headers[name].strip()
        headers[name] = data.draw(header_text.filter(lambda value: value.strip() != old))
    response = client.post(CALLBACK, data=body, headers=headers)
    assert response.status_code == 401, response.get_data()
    assert stored_nothing(redis_client)


@PROPERTY
@given(body=bodies, version=st.sampled_from(["v1", "v2"]))
def test_signed_random_bodies_never_5xx(
    client: FlaskClient, signer: Signer, redis_client: redis.Redis, body: bytes, version: str
) -> None:
    """Validly signed arbitrary bodies (lone surrogates too) get 200, 400 or 403, never a 5xx;
    every accepted one is one archive message."""
    before = redis_client.llen("archive")
    response = client.post(CALLBACK, data=body, headers=signer.headers(body, version=version))
    assert response.status_code in (200, 400, 403), response.get_data()
    status = (response.get_json() or {}).get("status")
    assert redis_client.llen("archive") == before + (1 if status == "accepted" else 0)
