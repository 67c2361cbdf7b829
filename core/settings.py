"""The one settings object, read from the environment.

Names and defaults are the outside contract (`docs/contract.md`, "Environment variables");
variables below the contract's list are ours and documented in the README. This module is the
only place that reads ``os.environ``. A bad value raises :class:`pydantic.ValidationError`,
whose message names the variable (:func:`settings_error` turns it into one line for a process
that refuses to start); secrets are :class:`pydantic.SecretStr` and never appear in ``repr``.
"""

from __future__ import annotations

import base64
import os
import re
import sys
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# An Alibaba Cloud region id (cn-beijing, ap-southeast-1, cn-shanghai-finance-1): it becomes part
# of a trusted certificate host name, so nothing but lower-case letters, digits and inner dashes.
REGION_ID = re.compile(r"[a-z]{2,}(?:-[a-z0-9]+)+")
# Hex SHA-256 of a DER SubjectPublicKeyInfo (colons, as openssl prints them, are dropped).
KEY_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
# Alibaba Cloud account ids are decimal (16 digits today).
ACCOUNT_ID = re.compile(r"[0-9]{1,32}")
# DashScope result links are signed https URLs on OSS hosts under .aliyuncs.com
# (docs/dashscope-transcription.md, "The transcription result file").
DEFAULT_RESULT_URL_REGEX = r"https://[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.aliyuncs\.com/[^#\s]*"

# Submission limits per model family, requests per second (seeds' comparison table).
DEFAULT_SUBMIT_RATES = "fun-asr=10,paraformer=20,qwen3-asr-flash-filetrans=10"


def broker_url_for(redis_url: str) -> str:
    """Kombu's spelling of a Redis URL: ``unix://PATH?db=N`` becomes ``redis+socket://PATH?virtual_host=N``.

    redis-py understands ``unix://`` but kombu's Redis transport does not; other URLs are
    returned unchanged.
    """
    if not redis_url.startswith("unix://"):
        return redis_url
    path, _, query = redis_url.removeprefix("unix://").partition("?")
    params = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    return f"redis+socket://{path}?virtual_host={params.get('db', '0')}"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _all_match(pattern: re.Pattern[str], what: str, values: list[str]) -> list[str]:
    bad = [value for value in values if not pattern.fullmatch(value)]
    if bad:
        raise ValueError(f"not {what}: {', '.join(repr(value) for value in bad)}")
    return values


class SettingsError(ValueError):
    """A missing or invalid setting; ``str()`` is one line that names the variable."""


def settings_error(exc: ValidationError) -> SettingsError:
    """One line naming each invalid variable (upper case) and why, from pydantic's error."""
    parts = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"][:1]).upper() or "settings"
        parts.append(f"{name}: {error['msg']}")
    return SettingsError("; ".join(parts).replace("\n", " "))


class Settings(BaseSettings):
    """Typed, frozen configuration; field ``foo_bar`` reads variable ``FOO_BAR``."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    # Redis and the broker.
    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_broker_url: str | None = None
    # ge=5, not 60: the crash-safety test runs a worker with a visibility timeout of seconds.
    broker_visibility_timeout_seconds: int = Field(3600, ge=5)

    # Webhook.
    # Required by the webhook process (webhook.trust), not by workers.
    webhook_public_url: str | None = None
    webhook_max_body_bytes: int = Field(1_048_576, ge=1024)
    eventbridge_signature_token: SecretStr | None = None
    # Trust (docs/eventbridge-signature.md, "Which certificate URLs to trust"): the regions whose
    # certificate hosts are trusted (default: the region of DASHSCOPE_BASE_URL), or a regular
    # expression that replaces that rule; pinned key fingerprints; the accounts that are ours.
    eventbridge_regions: Annotated[list[str], NoDecode] = Field(default_factory=list)
    eventbridge_cert_url_regex: str | None = None
    eventbridge_cert_sha256: Annotated[list[str], NoDecode] = Field(default_factory=list)
    eventbridge_account_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    eventbridge_max_skew_seconds: int = Field(60, ge=1)
    eventbridge_cert_ttl_seconds: int = Field(6 * 3600, ge=1)
    # A failed certificate fetch is remembered this long (s): a flood naming one bad URL
    # fetches it once per period, each delivery still answered 503.
    eventbridge_cert_failure_ttl_seconds: float = Field(5.0, gt=0, le=300)
    dedupe_ttl_seconds: int = Field(172_800, ge=60)
    receipt_sweep_after_seconds: int = Field(60, ge=1)
    # How often beat runs the archive sweep and reconciliation, seconds.
    sweep_interval_seconds: float = Field(30.0, gt=0)
    # prometheus-client's multi-process directory (gunicorn workers): /metrics sums its files.
    prometheus_multiproc_dir: str | None = None
    # When set, each worker serves its archive metrics on this port (GET /metrics).
    worker_metrics_port: int | None = Field(None, ge=1, le=65535)

    # Archiving.
    result_url_regex: str = DEFAULT_RESULT_URL_REGEX
    result_max_bytes: int = Field(2_147_483_648, ge=1)
    archive_urls: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["./archive"])
    # Transient failures are retried until the task's result links expire (the retry horizon,
    # worker/archiving/service.py); when set, also at most this many runs. Unset: no limit.
    archive_max_attempts: int | None = Field(None, ge=1)
    # Lease on one task's archiving (s), renewed every third of it while the worker lives;
    # keep it well below BROKER_VISIBILITY_TIMEOUT_SECONDS.
    archive_lease_seconds: int = Field(30, ge=1)
    # Poison-loop guard: runs of one task_id that started and never finished (the process died)
    # in a row before the dead letter; scheduled retries do not count.
    archive_max_deliveries: int = Field(12, ge=1)
    # Retry backoff (s): base * 2**retry with full jitter, capped here and at half the
    # visibility timeout.
    archive_retry_base_seconds: float = Field(2.0, gt=0)
    archive_retry_max_seconds: float = Field(300.0, gt=0)
    # The sweep re-enqueues a task whose archiving started this long ago (s) without a live lease.
    archive_stuck_after_seconds: int = Field(900, ge=1)
    # The sweep re-enqueues a receipt neither archived nor dead after this long (s) without a
    # live lease: its message was lost by the broker (e.g. a Redis failover). Well above a
    # normal queue wait, well below the 24 h life of result links.
    archive_reenqueue_after_seconds: int = Field(1800, ge=1)
    # Bodies from this size (bytes) go to S3/OSS as multipart uploads of this part size.
    archive_multipart_bytes: int = Field(16 * 1024 * 1024, ge=5 * 1024 * 1024)
    # Result files of one task downloaded and written at once.
    archive_file_concurrency: int = Field(4, ge=1, le=32)
    # Directory for result bodies in flight (default: the system temporary directory).
    archive_spool_dir: str | None = None
    # Read/connect timeout (s) of one result download.
    result_timeout_seconds: float = Field(60.0, gt=0)
    s3_endpoint_url: str | None = None
    oss_endpoint: str | None = None
    oss_public_endpoint: str | None = None
    oss_access_key_id: str | None = None
    oss_access_key_secret: SecretStr | None = None

    # Notifications (docs/contract.md, "Notifications"): each task that reaches its manifest is
    # announced to NOTIFY_URL, signed per Standard Webhooks with NOTIFY_SECRET (whsec_...).
    notify_url: str | None = None
    notify_secret: SecretStr | None = None
    # Attempts per announcement before its dead letter (backoff 5 s doubling, capped at 600 s:
    # the default 12 attempts span about an hour).
    notify_max_attempts: int = Field(12, ge=1)

    # Submission.
    media_url: str | None = None
    media_url_expires_seconds: int = Field(172_800, ge=60, le=7 * 86_400)
    media_checkpoint_dir: str | None = None
    submit_batch_size: int = Field(100, ge=1, le=100)
    submit_rates: str = DEFAULT_SUBMIT_RATES
    reconcile_after_seconds: int = Field(600, ge=1)
    # Files of at least this many bytes upload as resumable multipart (oss2.resumable_upload).
    media_multipart_threshold_bytes: int = Field(64 * 1024 * 1024, ge=100 * 1024)
    # Parallel uploads inside one batch task (threads).
    upload_threads: int = Field(8, ge=1, le=64)
    # How long submission records (task → files, file → task) are kept in Redis.
    submission_ttl_seconds: int = Field(7 * 86_400, ge=3600)

    # DashScope.
    dashscope_api_key: SecretStr | None = None
    # DASHSCOPE_HTTP_BASE_URL is the official SDK's name; DASHSCOPE_BASE_URL wins when both are set.
    dashscope_base_url: str = Field(
        "https://dashscope.aliyuncs.com/api/v1",
        validation_alias=AliasChoices("dashscope_base_url", "dashscope_http_base_url"),
    )
    dashscope_workspace: str | None = None
    dashscope_query_qps: float = Field(10, gt=0, le=20)
    # Submission trust (worker.submission): how far back reconciliation lists the account's
    # tasks (s; DashScope keeps finished tasks about 24 h, and one list window is at most 24 h);
    # how long after an unanswered submit its task may still appear in the list (s) before the
    # batch is submitted again; how often a paused account is probed (s); one request's timeout.
    reconcile_lookback_seconds: int = Field(86_400, ge=60, le=86_400)
    submit_uncertain_settle_seconds: float = Field(120.0, gt=0)
    dashscope_breaker_probe_seconds: float = Field(60.0, gt=0)
    dashscope_timeout_seconds: float = Field(30.0, gt=0)

    # Archiving faults. A result download must average at least this many bytes per second
    # once RESULT_TIMEOUT_SECONDS have passed: its total deadline is
    # max(RESULT_TIMEOUT_SECONDS, bytes / RESULT_MIN_BYTES_PER_SECOND).
    result_min_bytes_per_second: int = Field(262_144, ge=1)
    # Workers announce themselves every this many seconds (s); one silent for three periods,
    # or whose process is gone on this host, is dead and its unacknowledged messages go back
    # to their queues (worker/recovery.py).
    worker_heartbeat_seconds: float = Field(5.0, gt=0)
    # Worker processes (worker/app.py): on shutdown, running tasks get this long (s) before they
    # are cancelled and their messages requeued; keep it under the orchestrator's grace period
    # (deploy/k8s/worker.yaml, deploy/docker-compose.yml) less a margin. A prefork child is
    # replaced after this many tasks, or after a task that left it above this resident size.
    worker_soft_shutdown_seconds: float = Field(45.0, ge=0)
    worker_max_tasks_per_child: int = Field(1000, ge=1)
    worker_max_memory_per_child_mib: int = Field(512, ge=64)

    log_format: Literal["json", "console"] = Field(
        default_factory=lambda: "console" if sys.stdout.isatty() else "json"
    )

    _split_lists = field_validator(
        "archive_urls",
        "eventbridge_regions",
        "eventbridge_cert_sha256",
        "eventbridge_account_ids",
        mode="before",
    )(_split_csv)

    @field_validator("eventbridge_cert_url_regex", "result_url_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value

    @field_validator("eventbridge_regions")
    @classmethod
    def _region_ids(cls, values: list[str]) -> list[str]:
        return _all_match(REGION_ID, "a region id", [value.lower() for value in values])

    @field_validator("eventbridge_cert_sha256")
    @classmethod
    def _fingerprints(cls, values: list[str]) -> list[str]:
        normal = [value.replace(":", "").lower() for value in values]
        return _all_match(KEY_FINGERPRINT, "a hex SHA-256", normal)

    @field_validator("eventbridge_account_ids")
    @classmethod
    def _account_ids(cls, values: list[str]) -> list[str]:
        return _all_match(ACCOUNT_ID, "an account id", values)

    @property
    def broker_url(self) -> str:
        """Celery broker URL: ``CELERY_BROKER_URL``, else ``REDIS_URL`` in kombu's spelling."""
        return self.celery_broker_url or broker_url_for(self.redis_url)

    @field_validator("notify_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        """A Standard Webhooks secret: ``whsec_`` and Base64 (the prefix may be omitted)."""
        if value is None:
            return None
        encoded = value.get_secret_value().removeprefix("whsec_")
        try:
            base64.b64decode(encoded, validate=True)
        except ValueError as exc:
            raise ValueError("expected whsec_ followed by Base64") from exc
        return value

    @cached_property
    def result_url_pattern(self) -> re.Pattern[str]:
        """Compiled ``RESULT_URL_REGEX``; use ``fullmatch``."""
        return re.compile(self.result_url_regex)

    @cached_property
    def submit_rate_by_family(self) -> dict[str, float]:
        """``SUBMIT_RATES`` (``family=rps,...``) as a mapping of family prefix to requests/s."""
        rates: dict[str, float] = {}
        for item in self.submit_rates.split(","):
            if not item.strip():
                continue
            family, _, rate = item.partition("=")
            rates[family.strip()] = float(rate)
        return rates


def load_settings(**overrides: object) -> Settings:
    """Read the environment, applying ``overrides`` (field name → value) on top.

    Raises :class:`pydantic.ValidationError` naming the variable when a value is invalid.
    """
    return Settings(**overrides)  # type: ignore[arg-type]  # pydantic validates at runtime


def load_settings_from(env: Mapping[str, str], **overrides: object) -> Settings:
    """Like :func:`load_settings`, reading ``env`` (variable → value) over the process's own.

    For a parent that configures children through their environment (``asr-ingest run``) and
    needs the same settings itself, without changing ``os.environ``.
    """
    merged = {**os.environ, **env}

    class _FromMapping(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            source = EnvSettingsSource(settings_cls, case_sensitive=False)
            source.env_vars = {name.lower(): value for name, value in merged.items()}
            return init_settings, source

    return _FromMapping(**overrides)  # type: ignore[arg-type]  # pydantic validates at runtime
