"""Fixtures for webhook tests: a signing identity, its HTTPS certificate host, a configured app."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from core.settings import Settings, load_settings
from tests.support.eventbridge_signer import (
    CertificateHost,
    ConnectProxy,
    Identity,
    Route,
    Signer,
    make_identity,
)
from webhook import create_app

TARGET_URL = "https://hooks.example.test/callbacks/eventbridge"
CERT_PATH = "/certs/eventbridge.pem"
FINISH = "dashscope:System:AsyncTaskFinish"
ACCOUNT_ID = "1234567890123456"
# Real EventBridge certificate hosts (docs/eventbridge-signature.md), served locally through
# a CONNECT proxy: the official SDK's test vector host, the documented accelerate host, and a
# bucket anyone could register.
SDK_VECTOR_HOST = "cn-hangzhou-eventbridge.oss-cn-hangzhou.aliyuncs.com"
ACCELERATE_HOST = "cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com"
EVIL_HOST = "evil-eventbridge.oss-cn-hangzhou.aliyuncs.com"
SDK_VECTOR_PATH = "/x509_public_certificate_2021012101.pem"


def event_body(task_id: str | None = None, *, event_type: str = FINISH, **data: Any) -> bytes:
    """A DashScope AsyncTaskFinish CloudEvent (compact JSON bytes) for ``task_id``."""
    payload: dict[str, Any] = {
        "task_id": task_id or str(uuid.uuid4()),
        "task_status": "SUCCEEDED",
        "user_api_unique_key": "apikey:v1:audio:asr:transcription:paraformer-v2",
    }
    payload.update(data)
    envelope = {
        "id": str(uuid.uuid4()),
        "source": "acs.dashscope",
        "specversion": "1.0",
        "type": event_type,
        "aliyunaccountid": ACCOUNT_ID,
        "data": payload,
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def envelope_body(body: bytes, **fields: Any) -> bytes:
    """``body`` (an event) with envelope ``fields`` replaced (None removes one)."""
    document = json.loads(body)
    document.update(fields)
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


def archive_messages(client: redis.Redis) -> list[dict[str, Any]]:
    """The Celery messages on kombu's Redis list ``archive``: task name and decoded body."""
    messages = []
    for raw in client.lrange("archive", 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        messages.append({"task": message["headers"]["task"], "args": body[0], "kwargs": body[1]})
    return messages


@pytest.fixture(scope="session")
def identity() -> Identity:
    """EventBridge's signing key and certificate, made for this session."""
    return make_identity()


@pytest.fixture(scope="session")
def stranger() -> Identity:
    """Another key pair, whose signatures must never verify against ``identity``'s certificate."""
    return make_identity("someone-else")


@pytest.fixture(scope="session")
def cert_host_session(
    tmp_path_factory: pytest.TempPathFactory, identity: Identity
) -> Iterator[CertificateHost]:
    """One HTTPS certificate host for the session."""
    host = CertificateHost(tmp_path_factory.mktemp("tls")).start()
    yield host
    host.stop()


@pytest.fixture
def cert_host(
    cert_host_session: CertificateHost, identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> CertificateHost:
    """The certificate host reset to serve ``identity``'s certificate; its TLS CA trusted."""
    cert_host_session.requests.clear()
    cert_host_session.routes = {CERT_PATH: Route(identity.certificate_pem)}
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_host_session.ca_file))
    return cert_host_session


@pytest.fixture(scope="session")
def aliyun_cert_host(
    tmp_path_factory: pytest.TempPathFactory, identity: Identity
) -> Iterator[CertificateHost]:
    """An HTTPS host whose TLS certificate names the real EventBridge certificate hosts."""
    host = CertificateHost(
        tmp_path_factory.mktemp("aliyun-tls"),
        dns_names=(SDK_VECTOR_HOST, ACCELERATE_HOST, EVIL_HOST),
    ).start()
    yield host
    host.stop()


@pytest.fixture
def aliyun_proxy(
    aliyun_cert_host: CertificateHost, identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ConnectProxy]:
    """``HTTPS_PROXY`` tunnelling every host to ``aliyun_cert_host`` (serving the certificate)."""
    aliyun_cert_host.requests.clear()
    aliyun_cert_host.routes = {SDK_VECTOR_PATH: Route(identity.certificate_pem)}
    proxy = ConnectProxy(aliyun_cert_host.port).start()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(aliyun_cert_host.ca_file))
    yield proxy
    proxy.stop()


def cert_url_regex(host: CertificateHost) -> str:
    """A trusted-URL pattern admitting only ``https://127.0.0.1:<port>/certs/<name>.pem``."""
    return rf"https://127\.0\.0\.1:{host.port}/certs/[a-z0-9-]+\.pem"


@pytest.fixture
def settings(redis_url: str, cert_host: CertificateHost) -> Settings:
    """Settings for the session Redis, the test target URL and the local certificate host."""
    return load_settings(
        redis_url=redis_url,
        webhook_public_url=TARGET_URL,
        eventbridge_cert_url_regex=cert_url_regex(cert_host),
        log_format="json",
    )


def changed(settings: Settings, **fields: object) -> Settings:
    """``settings`` with ``fields`` replaced, validated like values from the environment."""
    return load_settings(**{**settings.model_dump(), **fields})


@pytest.fixture
def app(settings: Settings) -> Flask:
    """The webhook app for ``settings``."""
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Flask's test client of ``app``."""
    return app.test_client()


@pytest.fixture
def signer(identity: Identity, cert_host: CertificateHost) -> Signer:
    """Signs like EventBridge with the trusted certificate's key."""
    return Signer(identity, cert_host.url(CERT_PATH), TARGET_URL)
