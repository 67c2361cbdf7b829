"""What the webhook trusts: its public URL, the certificate URLs, pinned keys, our accounts.

Rules from `docs/eventbridge-signature.md` ("Which certificate URLs to trust", "What a receiver
must do around it"):

- The string-to-sign starts with the URL configured on the EventBridge target, so
  ``WEBHOOK_PUBLIC_URL`` is required; the request's own ``Host`` header is never used.
- Certificate hosts are OSS bucket names, registrable by anyone: trust only, for each
  configured region ``R``, ``R-eventbridge.oss-accelerate.aliyuncs.com`` and
  ``R-eventbridge.oss-R.aliyuncs.com`` over https, without user-info, port, query or fragment,
  with a path of safe segments ending in ``.pem``. The regions are ``EVENTBRIDGE_REGIONS``, by
  default the region of ``DASHSCOPE_BASE_URL``'s host; ``EVENTBRIDGE_CERT_URL_REGEX`` replaces
  the rule when set.
- ``EVENTBRIDGE_CERT_SHA256`` pins keys; ``EVENTBRIDGE_ACCOUNT_IDS`` binds the tenant.

Everything is checked once, when the app is built: a bad value raises
:class:`core.settings.SettingsError`, one line naming the variable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from core.settings import Settings, SettingsError
from webhook.errors import ForeignAccountError

DASHSCOPE_SOURCE = "acs.dashscope"
"""The ``source`` of every DashScope event (`docs/dashscope-transcription.md`)."""

REGION_BY_HOST = {
    "dashscope.aliyuncs.com": "cn-beijing",
    "dashscope-intl.aliyuncs.com": "ap-southeast-1",
    "dashscope-us.aliyuncs.com": "us-east-1",
    "cn-hongkong.dashscope.aliyuncs.com": "cn-hongkong",
}
"""DashScope API hosts and their regions (`docs/eventbridge-signature.md`)."""
# Workspace-dedicated hosts name their region: {workspace-id}.{region}.maas.aliyuncs.com
# (`docs/dashscope-transcription.md`, "Submitting a task").
_WORKSPACE_HOST = re.compile(r"[a-z0-9-]+\.(?P<region>[a-z0-9-]+)\.maas\.aliyuncs\.com")
# Path segments of letters, digits, "_", "-" and inner dots (no "." or ".." segment), last one
# ending in ".pem".
_SAFE_PEM_PATH = r"(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*/[A-Za-z0-9_-][A-Za-z0-9._-]*\.pem"


@dataclass(frozen=True)
class Trust:
    """The webhook's trust settings, validated.

    ``public_url`` goes into the string-to-sign; ``cert_urls`` is matched with ``fullmatch``
    against a certificate URL before any fetch; ``pins`` holds lower-case hex SHA-256 of trusted
    SubjectPublicKeyInfo (empty: any key); ``account_ids`` the accounts whose events are ours
    (empty: any account, as long as the source is DashScope).
    """

    public_url: str
    cert_urls: re.Pattern[str]
    pins: frozenset[str]
    account_ids: frozenset[str]

    def check_tenant(self, source: str, account_id: str) -> None:
        """Raise :class:`ForeignAccountError` (403) unless the event is DashScope's and ours."""
        if source != DASHSCOPE_SOURCE:
            raise ForeignAccountError(f"source {source!r}")
        if self.account_ids and account_id not in self.account_ids:
            raise ForeignAccountError("account not in EVENTBRIDGE_ACCOUNT_IDS")


def trust_from(settings: Settings) -> Trust:
    """The validated :class:`Trust` of ``settings``.

    Raises :class:`SettingsError` when ``WEBHOOK_PUBLIC_URL`` is missing or not an absolute
    http(s) URL, or when no region is configured and none follows from ``DASHSCOPE_BASE_URL``
    (and no ``EVENTBRIDGE_CERT_URL_REGEX`` replaces the region rule).
    """
    return Trust(
        public_url=public_url(settings.webhook_public_url),
        cert_urls=cert_url_pattern(settings),
        pins=frozenset(settings.eventbridge_cert_sha256),
        account_ids=frozenset(settings.eventbridge_account_ids),
    )


def public_url(value: str | None) -> str:
    """``WEBHOOK_PUBLIC_URL``, checked: absolute http(s) with a host; raises SettingsError."""
    if not value:
        raise SettingsError(
            "WEBHOOK_PUBLIC_URL is required: the URL configured as the EventBridge target"
        )
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise SettingsError(f"WEBHOOK_PUBLIC_URL is not an absolute http(s) URL: {value!r}")
    return value


def region_of(base_url: str) -> str | None:
    """The region of a DashScope base URL's host, or None for a host not listed."""
    host = (urlsplit(base_url).hostname or "").lower()
    if host in REGION_BY_HOST:
        return REGION_BY_HOST[host]
    workspace = _WORKSPACE_HOST.fullmatch(host)
    return workspace["region"] if workspace else None


def region_rule(regions: list[str]) -> str:
    """The regular expression of trusted certificate URLs for ``regions`` (for ``fullmatch``).

    ``regions`` are validated region ids (:data:`core.settings.REGION_ID`).
    """
    hosts = []
    for region in regions:
        bucket, oss = re.escape(f"{region}-eventbridge"), re.escape(f"oss-{region}")
        hosts += [rf"{bucket}\.oss-accelerate\.aliyuncs\.com", rf"{bucket}\.{oss}\.aliyuncs\.com"]
    return rf"https://(?:{'|'.join(hosts)}){_SAFE_PEM_PATH}"


def cert_url_pattern(settings: Settings) -> re.Pattern[str]:
    """``EVENTBRIDGE_CERT_URL_REGEX`` when set, else the region rule, compiled once."""
    if settings.eventbridge_cert_url_regex is not None:
        return re.compile(settings.eventbridge_cert_url_regex)
    regions = settings.eventbridge_regions
    if not regions:
        derived = region_of(settings.dashscope_base_url)
        if derived is None:
            raise SettingsError(
                "EVENTBRIDGE_REGIONS is required: no region is known for DASHSCOPE_BASE_URL "
                f"{settings.dashscope_base_url!r}"
            )
        regions = [derived]
    return re.compile(region_rule(regions))
