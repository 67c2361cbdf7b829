"""``asr-ingest sandbox``: serve the DashScope + EventBridge stand-in until interrupted.

Prints ``sandbox listening on http://HOST:PORT`` first (``--port 0`` picks a free port), then
the environment a webhook and worker need to trust it. Options map onto
:class:`sandbox.config.SandboxConfig` fields (:data:`OPTION_FIELDS`).
"""

from __future__ import annotations

import sys
from typing import Any

import click
import structlog

from sandbox.config import DEFAULT_SUBMIT_RPS, SandboxConfig
from sandbox.server import READY_PREFIX, Sandbox

OPTION_FIELDS = {
    "api_key": "api_key",
    "callback_url": "callback_url",
    "signature_version": "signature_version",
    "token": "signature_token",
    "delivery_delay": "delivery_delay_seconds",
    "duplicates": "duplicates",
    "duplicate_spread": "duplicate_spread_seconds",
    "drop_fraction": "drop_fraction",
    "fail_fraction": "fail_fraction",
    "result_padding": "result_padding_bytes",
    "pending_seconds": "pending_seconds",
    "running_seconds": "min_running_seconds",
    "retry_base": "retry_base_seconds",
    "retry_max_attempts": "retry_max_attempts",
    "retry_strategy": "retry_strategy",
    "foreign_events": "foreign_events",
    "foreign_interval": "foreign_event_interval_seconds",
    "account_error": "account_error",
    "account_error_seconds": "account_error_seconds",
    "ambiguous_submit_fraction": "ambiguous_submit_fraction",
    "ambiguous_submit_mode": "ambiguous_submit_mode",
    "ambiguous_submit_delay": "ambiguous_submit_delay_seconds",
    "error_msg_fraction": "error_msg_fraction",
    "suspend_fraction": "suspend_fraction",
    "suspend_seconds": "suspend_seconds",
    "event_on_cancel": "event_on_cancel",
    "query_qps": "query_qps",
}
FRACTION = click.FloatRange(0.0, 1.0)
SECONDS = click.FloatRange(min=0.0)


def _rates(pairs: tuple[str, ...]) -> dict[str, float]:
    rates = dict(DEFAULT_SUBMIT_RPS)
    for pair in pairs:
        family, sep, rate = pair.partition("=")
        try:
            rates[family.strip()] = float(rate)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(
                f"expected FAMILY=RPS, got {pair!r}", param_hint="--submit-rps"
            )
    return rates


def configure_logging(console: bool) -> None:
    """structlog to stdout: JSON lines, or the console renderer on a terminal.

    The sandbox is a stand-in for a foreign service, so it does not borrow the product's
    logging setup; it never logs a signed URL.
    """
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )


def config_from_options(options: dict[str, Any]) -> SandboxConfig:
    """The :class:`SandboxConfig` for parsed CLI ``options`` (click parameter names)."""
    fields = {field: options[name] for name, field in OPTION_FIELDS.items()}
    return SandboxConfig(
        **fields,
        submit_rps=_rates(options["submit_rps"]),
        use_ffprobe=not options["no_ffprobe"],
        results_in_events=not options["no_results_in_events"],
    )


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, help="0 picks a free port.")
@click.option("--callback-url", help="Where events go, and the URL signed over.")
@click.option("--api-key", default="sk-sandbox", show_default=True, envvar="DASHSCOPE_API_KEY")
@click.option("--signature-version", type=click.Choice(["v2", "v1"]), default="v2")
@click.option("--token", help="x-eventbridge-signature-token to send.")
@click.option("--delivery-delay", type=SECONDS, default=0.0, help="Seconds before the first push.")
@click.option("--duplicates", type=click.IntRange(min=0), default=0, help="Extra copies per event.")
@click.option("--duplicate-spread", type=SECONDS, default=1.0, help="Seconds the copies span.")
@click.option("--drop-fraction", type=FRACTION, default=0.0, help="Share of tasks not announced.")
@click.option("--fail-fraction", type=FRACTION, default=0.0, help="Share of files that fail.")
@click.option("--result-padding", type=click.IntRange(min=0), default=0, help="Bytes added.")
@click.option("--pending-seconds", type=SECONDS, default=0.2, show_default=True)
@click.option("--running-seconds", type=SECONDS, default=0.2, help="Least time RUNNING.")
@click.option("--retry-base", type=SECONDS, default=1.0, help="First retry delay in seconds.")
@click.option("--retry-max-attempts", type=click.IntRange(min=1), default=176, show_default=True)
@click.option(
    "--retry-strategy",
    type=click.Choice(["backoff", "exponential"]),
    default="exponential",
    show_default=True,
    help="EventBridge PushRetryStrategy: backoff = 3 retries 10-20 s apart, then dropped; "
    "exponential = doubling up to 512 s, 176 tries over a day.",
)
@click.option(
    "--no-results-in-events",
    is_flag=True,
    help="Events carry contain_result: false and no output_result (the receiver must query).",
)
@click.option(
    "--foreign-events",
    type=click.IntRange(min=0),
    default=0,
    help="Also push N signed events of image/video tasks (wanx2.1-t2i-turbo, wanx2.1-i2v-turbo).",
)
@click.option("--foreign-interval", type=SECONDS, default=1.0, help="Seconds between them.")
@click.option(
    "--account-error",
    type=click.Choice(["arrearage", "allocation-quota"]),
    help="Fail every DashScope call: 403 Arrearage or 429 Throttling.AllocationQuota.",
)
@click.option(
    "--account-error-seconds",
    type=SECONDS,
    default=60.0,
    show_default=True,
    help="How long --account-error lasts after start.",
)
@click.option(
    "--ambiguous-submit-fraction",
    type=FRACTION,
    default=0.0,
    help="Share of submissions whose task is created but whose answer is lost.",
)
@click.option(
    "--ambiguous-submit-mode",
    type=click.Choice(["both", "drop", "delay"]),
    default="both",
    show_default=True,
    help="Lose the answer by closing the connection, by answering late, or either.",
)
@click.option(
    "--ambiguous-submit-delay",
    type=SECONDS,
    default=65.0,
    show_default=True,
    help="Seconds a delayed answer is held.",
)
@click.option(
    "--error-msg-fraction",
    type=FRACTION,
    default=0.0,
    help="Share of error bodies with msg instead of message.",
)
@click.option("--suspend-fraction", type=FRACTION, default=0.0, help="Share of tasks SUSPENDED.")
@click.option("--suspend-seconds", type=SECONDS, default=1.0, help="How long they stay so.")
@click.option("--event-on-cancel", is_flag=True, help="Also push an event for canceled tasks.")
@click.option("--query-qps", type=click.FloatRange(min=0.1), default=20.0, show_default=True)
@click.option("--submit-rps", multiple=True, help="FAMILY=RPS, repeatable.")
@click.option("--no-ffprobe", is_flag=True, help="Probe media with mutagen only.")
@click.option("--log-requests", is_flag=True, help="Log every HTTP request.")
def sandbox(host: str, port: int, log_requests: bool, **options: Any) -> None:
    """Run the local DashScope + EventBridge stand-in."""
    config = config_from_options(options)
    configure_logging(console=sys.stdout.isatty())
    server = Sandbox(config, host=host, port=port, log_requests=log_requests)
    click.echo(READY_PREFIX + server.url)
    click.echo(f"DASHSCOPE_BASE_URL={server.api_url}")
    click.echo(f"DASHSCOPE_API_KEY={config.api_key}")
    click.echo(f"RESULT_URL_REGEX={server.result_url_regex}")
    click.echo(f"EVENTBRIDGE_CERT_URL_REGEX={server.cert_url_regex}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.service.close()
