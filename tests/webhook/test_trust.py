"""Trust: the region rule for certificate URLs, start-up checks, and the tenant binding."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import redis
from flask.testing import FlaskClient

from core.settings import Settings, SettingsError, load_settings
from tests.support.eventbridge_signer import (
    CertificateHost,
    ConnectProxy,
    Identity,
    Route,
    Signer,
)
from tests.webhook.conftest import (
    ACCELERATE_HOST,
    EVIL_HOST,
    SDK_VECTOR_HOST,
    SDK_VECTOR_PATH,
    TARGET_URL,
    changed,
    event_body,
)
from webhook import create_app
from webhook.errors import ForeignAccountError
from webhook.trust import region_of, region_rule, trust_from

CALLBACK = "/callbacks/eventbridge"
SDK_VECTOR_URL = f"https://{SDK_VECTOR_HOST}{SDK_VECTOR_PATH}"


def rule(*regions: str) -> re.Pattern[str]:
    """The compiled region rule for ``regions``."""
    return re.compile(region_rule(list(regions)))


@pytest.mark.parametrize(
    "url",
    [
        SDK_VECTOR_URL,
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/x509/public.pem",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/a/b-c_d.v2.pem",
        "https://ap-southeast-1-eventbridge.oss-ap-southeast-1.aliyuncs.com/c.pem",
    ],
)
def test_region_rule_admits_both_hosts_of_configured_regions(url: str) -> None:
    """Each configured region's accelerate and regional OSS hosts are trusted (SDK vector too)."""
    assert rule("cn-hangzhou", "ap-southeast-1").fullmatch(url)


@pytest.mark.parametrize(
    "url",
    [
        f"https://{EVIL_HOST}{SDK_VECTOR_PATH}",
        "https://evil-eventbridge.oss-accelerate.aliyuncs.com/c.pem",
        "https://cn-beijing-eventbridge.oss-accelerate.aliyuncs.com/c.pem",
        "https://cn-hangzhou-eventbridge.oss-cn-beijing.aliyuncs.com/c.pem",
        "https://x-cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/c.pem",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com.evil.test/c.pem",
        "https://evil.test/cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/c.pem",
        "http://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/c.pem",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com:443/c.pem",
        "https://u@cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/c.pem",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/c.pem?a=b",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/c.pem#f",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/c.pem.txt",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/../c.pem",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com//c.pem",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/%2e%2e/c.pem",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/.pem",
        "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/c.pem\n",
    ],
)
def test_region_rule_refuses_everything_else(url: str) -> None:
    """Other buckets and regions, look-alikes, http, ports, user-info, queries, odd paths."""
    assert not rule("cn-hangzhou").fullmatch(url)


@pytest.mark.parametrize(
    ("base_url", "region"),
    [
        ("https://dashscope.aliyuncs.com/api/v1", "cn-beijing"),
        ("https://dashscope-intl.aliyuncs.com/api/v1", "ap-southeast-1"),
        ("https://dashscope-us.aliyuncs.com/api/v1", "us-east-1"),
        ("https://cn-hongkong.dashscope.aliyuncs.com/api/v1", "cn-hongkong"),
        ("https://ws-123.cn-shanghai.maas.aliyuncs.com/api/v1", "cn-shanghai"),
        ("http://127.0.0.1:8080/api/v1", None),
        ("https://dashscope.aliyuncs.com.evil.test/api/v1", None),
    ],
)
def test_region_of_base_url(base_url: str, region: str | None) -> None:
    """The default region follows DASHSCOPE_BASE_URL's host as the protocol notes list."""
    assert region_of(base_url) == region


def test_default_regions_follow_the_sdk_base_url_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DASHSCOPE_HTTP_BASE_URL (the SDK's name) sets the base URL, hence the default region."""
    monkeypatch.delenv("DASHSCOPE_BASE_URL", raising=False)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", "https://dashscope-intl.aliyuncs.com/api/v1")
    trust = trust_from(load_settings(webhook_public_url=TARGET_URL))
    assert trust.cert_urls.fullmatch(
        "https://ap-southeast-1-eventbridge.oss-accelerate.aliyuncs.com/c.pem"
    )
    assert not trust.cert_urls.fullmatch(
        "https://cn-beijing-eventbridge.oss-accelerate.aliyuncs.com/c.pem"
    )


def test_cert_url_regex_replaces_the_region_rule() -> None:
    """EVENTBRIDGE_CERT_URL_REGEX, when set, is the whole rule (regions are not consulted)."""
    trust = trust_from(
        load_settings(
            webhook_public_url=TARGET_URL,
            eventbridge_regions="cn-hangzhou",
            eventbridge_cert_url_regex=r"https://certs\.example\.test/[a-z]+\.pem",
        )
    )
    assert trust.cert_urls.fullmatch("https://certs.example.test/a.pem")
    assert not trust.cert_urls.fullmatch(SDK_VECTOR_URL)


@pytest.mark.parametrize(
    ("fields", "variable"),
    [
        ({"webhook_public_url": None}, "WEBHOOK_PUBLIC_URL"),
        ({"webhook_public_url": "/callbacks/eventbridge"}, "WEBHOOK_PUBLIC_URL"),
        ({"eventbridge_cert_url_regex": None}, "EVENTBRIDGE_REGIONS"),
    ],
)
def test_app_refuses_to_start_naming_the_variable(
    settings: Settings, fields: dict[str, object], variable: str
) -> None:
    """No public URL, or no region known for a local DASHSCOPE_BASE_URL: one line, the name."""
    local = changed(settings, dashscope_base_url="http://127.0.0.1:9/api/v1", **fields)
    with pytest.raises(SettingsError) as caught:
        create_app(local)
    message = str(caught.value)
    assert variable in message and "\n" not in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EVENTBRIDGE_REGIONS", "cn-hangzhou,evil.example"),
        ("EVENTBRIDGE_REGIONS", "cn_hangzhou"),
        ("EVENTBRIDGE_CERT_SHA256", "abc"),
        ("EVENTBRIDGE_ACCOUNT_IDS", "12,acct-x"),
    ],
)
def test_bad_trust_value_fails_at_start_in_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A malformed trust variable stops create_app() with one line naming it."""
    monkeypatch.setenv("WEBHOOK_PUBLIC_URL", TARGET_URL)
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        create_app()
    message = str(caught.value)
    assert message.startswith(f"{variable}:") and "\n" not in message


def test_wsgi_entrypoint_exits_with_one_line(tmp_path: object) -> None:
    """Importing webhook.wsgi without WEBHOOK_PUBLIC_URL prints one line and exits with 4."""
    env = {"PATH": "/usr/bin:/bin", "LOG_FORMAT": "json"}
    done = subprocess.run(
        [sys.executable, "-c", "import webhook.wsgi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 4
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "WEBHOOK_PUBLIC_URL" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_account_and_source_binding() -> None:
    """Only acs.dashscope is ours; with account ids set, only those accounts."""
    open_trust = trust_from(load_settings(webhook_public_url=TARGET_URL))
    open_trust.check_tenant("acs.dashscope", "")
    bound = trust_from(load_settings(webhook_public_url=TARGET_URL, eventbridge_account_ids="1,2"))
    bound.check_tenant("acs.dashscope", "2")
    for source, account in [("acs.dashscope", "3"), ("acs.ecs", "1"), ("", "1")]:
        with pytest.raises(ForeignAccountError):
            bound.check_tenant(source, account)


# -- the production rule with a real fetch (CONNECT proxy to a local HTTPS host) --------------


@pytest.fixture
def region_client(redis_url: str, aliyun_proxy: ConnectProxy) -> FlaskClient:
    """The webhook with the region rule for cn-hangzhou (no regex), fetching through the proxy."""
    settings = load_settings(
        redis_url=redis_url,
        webhook_public_url=TARGET_URL,
        eventbridge_regions="cn-hangzhou",
        log_format="json",
    )
    return create_app(settings).test_client()


def test_sdk_vector_host_is_trusted_for_its_region(
    region_client: FlaskClient,
    identity: Identity,
    aliyun_proxy: ConnectProxy,
    aliyun_cert_host: CertificateHost,
) -> None:
    """With cn-hangzhou configured, a certificate on the SDK's test vector host is fetched, used."""
    body = event_body("task-region-1")
    headers = Signer(identity, SDK_VECTOR_URL, TARGET_URL).headers(body)
    response = region_client.post(CALLBACK, data=body, headers=headers)
    assert (response.status_code, response.get_json()["status"]) == (200, "accepted")
    assert aliyun_proxy.targets == [f"{SDK_VECTOR_HOST}:443"]
    assert aliyun_cert_host.requests == [SDK_VECTOR_PATH]


@pytest.mark.parametrize(
    "url",
    [
        f"https://{EVIL_HOST}{SDK_VECTOR_PATH}",
        f"https://evil-eventbridge.oss-accelerate.aliyuncs.com{SDK_VECTOR_PATH}",
        f"https://cn-beijing-eventbridge.oss-accelerate.aliyuncs.com{SDK_VECTOR_PATH}",
    ],
)
def test_registrable_buckets_are_refused_unfetched(
    region_client: FlaskClient,
    stranger: Identity,
    aliyun_proxy: ConnectProxy,
    aliyun_cert_host: CertificateHost,
    redis_client: redis.Redis,
    url: str,
) -> None:
    """An attacker's own bucket (evil-eventbridge) or another region: 401, no fetch at all."""
    aliyun_cert_host.routes[SDK_VECTOR_PATH] = Route(stranger.certificate_pem)
    body = event_body("task-region-2")
    response = region_client.post(
        CALLBACK, data=body, headers=Signer(stranger, url, TARGET_URL).headers(body)
    )
    assert response.status_code == 401
    assert response.get_json() == {"error": "untrusted_certificate_url"}
    assert aliyun_proxy.targets == [] and aliyun_cert_host.requests == []
    assert not redis_client.keys("asr:receipt:*")


def test_accelerate_host_is_trusted_too(
    region_client: FlaskClient, identity: Identity, aliyun_proxy: ConnectProxy
) -> None:
    """The documented <region>-eventbridge.oss-accelerate.aliyuncs.com host is fetched and used."""
    body = event_body("task-region-3")
    url = f"https://{ACCELERATE_HOST}{SDK_VECTOR_PATH}"
    response = region_client.post(
        CALLBACK, data=body, headers=Signer(identity, url, TARGET_URL).headers(body)
    )
    assert response.status_code == 200
    assert aliyun_proxy.targets == [f"{ACCELERATE_HOST}:443"]
