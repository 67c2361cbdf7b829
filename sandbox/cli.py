"""``asr-ingest sandbox``: serve the DashScope + EventBridge stand-in until interrupted.

Prints ``sandbox listening on http://HOST:PORT`` first (``--port 0`` picks a free port), then
the environment a webhook and worker need to trust it.
"""

from __future__ import annotations

import click

from sandbox.config import DEFAULT_SUBMIT_RPS, SandboxConfig
from sandbox.server import READY_PREFIX, Sandbox


def _rates(pairs: tuple[str, ...]) -> dict[str, float]:
    rates = dict(DEFAULT_SUBMIT_RPS)
    for pair in pairs:
        family, sep, rate = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected FAMILY=RPS, got {pair!r}")
        rates[family.strip()] = float(rate)
    return rates


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, help="0 picks a free port.")
@click.option("--callback-url", help="Where events go, and the URL signed over.")
@click.option("--api-key", default="sk-sandbox", show_default=True, envvar="DASHSCOPE_API_KEY")
@click.option("--signature-version", type=click.Choice(["v2", "v1"]), default="v2")
@click.option("--token", help="x-eventbridge-signature-token to send.")
@click.option("--delivery-delay", type=float, default=0.0, help="Seconds before the first push.")
@click.option("--duplicates", type=int, default=0, help="Extra copies of each event.")
@click.option("--duplicate-spread", type=float, default=1.0, help="Seconds over which copies go.")
@click.option("--drop-fraction", type=float, default=0.0, help="Fraction of tasks not announced.")
@click.option("--fail-fraction", type=float, default=0.0, help="Fraction of files that fail.")
@click.option("--result-padding", type=int, default=0, help="Extra bytes in each result file.")
@click.option("--pending-seconds", type=float, default=0.2)
@click.option("--running-seconds", type=float, default=0.2, help="Least time RUNNING.")
@click.option("--retry-base", type=float, default=1.0, help="First retry delay in seconds.")
@click.option("--retry-max-attempts", type=int, default=176)
@click.option("--query-qps", type=float, default=20.0)
@click.option("--submit-rps", multiple=True, help="FAMILY=RPS, repeatable.")
@click.option("--no-ffprobe", is_flag=True, help="Probe media with mutagen only.")
@click.option("--log-requests", is_flag=True)
def sandbox(host: str, port: int, log_requests: bool, **options: object) -> None:
    """Run the local DashScope + EventBridge stand-in."""
    config = SandboxConfig(
        api_key=str(options["api_key"]),
        callback_url=options["callback_url"],  # type: ignore[arg-type]  # click gives str | None
        signature_version=options["signature_version"],  # type: ignore[arg-type]  # a Choice
        signature_token=options["token"],  # type: ignore[arg-type]  # click gives str | None
        delivery_delay_seconds=float(options["delivery_delay"]),  # type: ignore[arg-type]
        duplicates=int(options["duplicates"]),  # type: ignore[call-overload]
        duplicate_spread_seconds=float(options["duplicate_spread"]),  # type: ignore[arg-type]
        drop_fraction=float(options["drop_fraction"]),  # type: ignore[arg-type]
        fail_fraction=float(options["fail_fraction"]),  # type: ignore[arg-type]
        result_padding_bytes=int(options["result_padding"]),  # type: ignore[call-overload]
        pending_seconds=float(options["pending_seconds"]),  # type: ignore[arg-type]
        min_running_seconds=float(options["running_seconds"]),  # type: ignore[arg-type]
        retry_base_seconds=float(options["retry_base"]),  # type: ignore[arg-type]
        retry_max_attempts=int(options["retry_max_attempts"]),  # type: ignore[call-overload]
        query_qps=float(options["query_qps"]),  # type: ignore[arg-type]
        submit_rps=_rates(options["submit_rps"]),  # type: ignore[arg-type]
        use_ffprobe=not options["no_ffprobe"],
    )
    server = Sandbox(config, host=host, port=port, log_requests=log_requests)
    click.echo(READY_PREFIX + server.url)
    click.echo(f"DASHSCOPE_BASE_URL={server.api_url}")
    click.echo(f"DASHSCOPE_API_KEY={config.api_key}")
    click.echo(f"RESULT_URL_REGEX={server.result_url_regex}")
    click.echo(f"EVENTBRIDGE_CERT_URL_REGEX={server.cert_url_regex}", nl=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.service.close()
