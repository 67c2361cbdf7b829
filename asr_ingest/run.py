"""``asr-ingest run``: the whole pipeline on one machine, then a table of what became of each file.

Whatever the environment configures is used as it is; every part it does not configure is
started as a child process (see :mod:`asr_ingest.stack`):

=================  ===================  ==============================================
not configured     started              environment given to the other parts
=================  ===================  ==============================================
``REDIS_URL``      embedded Redis       ``REDIS_URL`` (a unix socket in a temp dir)
``MEDIA_URL``      moto as OSS          ``MEDIA_URL``, ``OSS_ENDPOINT``, OSS keys
``DASHSCOPE_...``  the sandbox          ``DASHSCOPE_BASE_URL``/``_API_KEY``, both regexes
(always)           gunicorn webhook     ``WEBHOOK_PUBLIC_URL`` (else on its port)
(always)           Celery worker+beat
=================  ===================  ==============================================

``ARCHIVE_URLS`` defaults to ``./archive``. The files under PATH (default: the bundled samples)
are shared round-robin among the ``--model`` values (default: one model of each family),
submitted, and followed until each is archived or failed.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import click
from rich.console import Console

from asr_ingest.outcomes import follow_runs, render_run_table
from asr_ingest.stack import Stack
from asr_ingest.starters import (
    free_port,
    moto_spec,
    redis_spec,
    sandbox_env,
    sandbox_spec,
    webhook_spec,
    worker_spec,
)
from asr_ingest.submit_cmd import SubmitReport, submit_paths
from core.settings import Settings, load_settings, load_settings_from
from worker.submission.batching import parse_parameters
from worker.submission.media import SUPPORTED_FORMATS, walk

DEFAULT_MODELS = ("fun-asr", "paraformer-v2", "qwen3-asr-flash-filetrans")
SAMPLES = Path(__file__).resolve().parent.parent / "sandbox" / "samples"
MEDIA_BUCKET = "asr-ingest-media"
LOCAL_KEYS = {"OSS_ACCESS_KEY_ID": "local", "OSS_ACCESS_KEY_SECRET": "local"}
AWS_LOCAL = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def bundled_samples() -> list[str]:
    """The sample media shipped in ``sandbox/samples`` (supported formats only), sorted."""
    return sorted(
        str(path)
        for path in SAMPLES.iterdir()
        if path.suffix.lower().lstrip(".") in SUPPORTED_FORMATS
    )


def _start_media_store(stack: Stack) -> dict[str, str]:
    """moto as the OSS media bucket (oss2 reaches it through an IP endpoint)."""
    store = stack.start(moto_spec(free_port()))
    client = boto3.client(
        "s3",
        endpoint_url=store.spec.url,
        aws_access_key_id=AWS_LOCAL["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_LOCAL["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS_LOCAL["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=MEDIA_BUCKET)
    return {"MEDIA_URL": f"oss://{MEDIA_BUCKET}/uploads", "OSS_ENDPOINT": store.spec.url}


def start_local_parts(
    stack: Stack, settings: Settings, workdir: Path, sandbox_args: Sequence[str] = ()
) -> dict[str, str]:
    """Start what ``settings`` does not configure; the environment every part then shares.

    Raises :class:`asr_ingest.stack.StackError` when a part does not become ready.
    """
    configured = settings.model_fields_set
    env: dict[str, str] = {}
    if "redis_url" not in configured:
        env["REDIS_URL"] = stack.start(redis_spec(workdir / "redis")).spec.url
    if "media_url" not in configured:
        env.update(LOCAL_KEYS, **_start_media_store(stack))
    if "archive_urls" not in configured:
        env["ARCHIVE_URLS"] = (Path.cwd() / "archive").as_uri()
    public_url = settings.webhook_public_url
    if public_url:  # e.g. a tunnel's URL; the local webhook listens on its port if it has one
        web_port = urlsplit(public_url).port or free_port()
    else:
        web_port = free_port()
        public_url = f"http://127.0.0.1:{web_port}/callbacks/eventbridge"
        env["WEBHOOK_PUBLIC_URL"] = public_url
    if "dashscope_api_key" not in configured:
        sandbox = stack.start(sandbox_spec(free_port(), public_url, extra_args=sandbox_args))
        env.update(sandbox_env(sandbox))
    stack.start_many(
        [
            webhook_spec(web_port, env),
            worker_spec(env, beat_schedule=workdir / "beat-schedule"),
        ]
    )
    return env


def submit_round_robin(
    settings: Settings,
    paths: Sequence[str],
    models: Sequence[str],
    parameters: dict[str, object],
    force: bool,
) -> list[SubmitReport]:
    """Share the accepted files under ``paths`` round-robin among ``models``; one run each.

    Rejected paths are recorded with the first model's run so they appear in its outcomes.
    """
    accepted, rejected = walk(paths)
    groups: list[list[str]] = [[] for _ in models]
    for n, media in enumerate(accepted):
        groups[n % len(models)].append(media.path)
    groups[0].extend(rejection.path for rejection in rejected)
    return [
        submit_paths(settings, group, model, dict(parameters), force)
        for model, group in zip(models, groups, strict=True)
        if group
    ]


@click.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option(
    "--model", "models", multiple=True, help="Model; repeat to share files among several."
)
@click.option("--param", "params", multiple=True, help="Request parameter k=v (JSON value).")
@click.option("--force", is_flag=True, help="Submit files already submitted before.")
@click.option("--timeout", default=900.0, show_default=True, help="Wait limit, seconds.")
@click.option("--sandbox-arg", "sandbox_args", multiple=True, help="Pass an option to the sandbox.")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), help="Child logs.")
@click.option("--quiet", is_flag=True, help="Do not echo the children's logs.")
def run(
    paths: tuple[str, ...],
    models: tuple[str, ...],
    params: tuple[str, ...],
    force: bool,
    timeout: float,
    sandbox_args: tuple[str, ...],
    log_dir: Path | None,
    quiet: bool,
) -> None:
    """Run everything not configured, submit PATH... and wait until every file is settled."""
    console = Console(width=None if sys.stdout.isatty() else 160)
    sink = (lambda _line: None) if quiet else _console_sink(console)
    with (
        tempfile.TemporaryDirectory(prefix="asr-ingest-") as tmp,
        Stack(sink=sink, log_dir=log_dir) as stack,
    ):
        env = start_local_parts(stack, load_settings(), Path(tmp), sandbox_args)
        settings = load_settings_from(env)  # the in-process submitter sees what children see
        reports = submit_round_robin(
            settings,
            list(paths) or bundled_samples(),
            models or DEFAULT_MODELS,
            parse_parameters(params),
            force,
        )
        outcomes = follow_runs(settings, reports, console, timeout)
        rows = render_run_table(console, settings, outcomes)
    sys.exit(0 if all(row.status == "succeeded" for row in rows) else 1)


def _console_sink(console: Console) -> Callable[[str], None]:
    def emit(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    return emit
