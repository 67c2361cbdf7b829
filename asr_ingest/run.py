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

import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import boto3
import click
from rich.console import Console

from asr_ingest.home import answers, home_dir, log_dir, redis_dir, socket_path, socket_url
from asr_ingest.outcomes import build_rows, follow_runs, print_json_rows, render_run_table
from asr_ingest.stack import Stack
from asr_ingest.starters import (
    free_port,
    listening_socket,
    moto_spec,
    redis_spec,
    sandbox_env,
    sandbox_spec,
    webhook_spec,
    worker_spec,
)
from asr_ingest.submit_cmd import SubmitReport, submit_paths
from core.errors import PermanentError
from core.models import family_of
from core.redis_client import connect
from core.settings import Settings, broker_url_for, load_settings, load_settings_from
from worker.submission.batching import check_parameters, parse_parameters
from worker.submission.media import SUPPORTED_FORMATS, walk
from worker.submission.tracking import OutcomeReader

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
    stack: Stack,
    settings: Settings,
    home: Path,
    sandbox_args: Sequence[str] = (),
) -> dict[str, str]:
    """Start what ``settings`` does not configure; the environment every part then shares.

    Configured Redis and broker URLs are passed on as they are. The embedded Redis keeps its
    data in ``home`` (:mod:`asr_ingest.home`), so state outlives the run. Raises
    :class:`asr_ingest.stack.StackError` when a part does not become ready.
    """
    configured = settings.model_fields_set
    env = _stores(stack, settings, home)
    web, public_url = _webhook_address(settings)
    env["WEBHOOK_PUBLIC_URL"] = public_url
    if "dashscope_api_key" not in configured:
        sandbox = stack.start(sandbox_spec(free_port(), public_url, extra_args=sandbox_args))
        env.update(sandbox_env(sandbox))
    env.update(_reconcile_soon(settings, sandbox_args))
    try:
        stack.start_many(
            [webhook_spec(web, env), worker_spec(env, beat_schedule=home / "beat-schedule")]
        )
    finally:
        if isinstance(web, socket.socket):
            web.close()  # gunicorn holds its own copy
    return env


def _stores(stack: Stack, settings: Settings, home: Path) -> dict[str, str]:
    """Redis, the broker, the media store and the archive: configured, else started here."""
    configured = settings.model_fields_set
    env = {"REDIS_URL": settings.redis_url, "CELERY_BROKER_URL": settings.broker_url}
    if "redis_url" not in configured:
        env["REDIS_URL"] = _local_redis(stack, home)
        env["CELERY_BROKER_URL"] = broker_url_for(env["REDIS_URL"])
    if "celery_broker_url" in configured:
        env["CELERY_BROKER_URL"] = settings.broker_url
    if "media_url" not in configured:
        env.update(LOCAL_KEYS, **_start_media_store(stack))
    if "archive_urls" not in configured:
        env["ARCHIVE_URLS"] = (Path.cwd() / "archive").as_uri()
    return env


def _webhook_address(settings: Settings) -> tuple[int | socket.socket, str]:
    """Where the local webhook listens (a port, or a listening socket held from now on so no
    other process can take it) and the public URL events are signed for."""
    public_url = settings.webhook_public_url
    if public_url and urlsplit(public_url).port:  # e.g. a tunnel's URL with the local port
        return int(urlsplit(public_url).port or 0), public_url
    web = listening_socket()
    local_url = f"http://127.0.0.1:{web.getsockname()[1]}/callbacks/eventbridge"
    return web, public_url or local_url


def _local_redis(stack: Stack, home: Path) -> str:
    """The URL of ``home``'s embedded Redis: a server already serving it, else a new child."""
    url = socket_url(home)
    if answers(url):
        return url
    return str(stack.start(redis_spec(redis_dir(home), socket_path=socket_path(home))).spec.url)


def _reconcile_soon(settings: Settings, sandbox_args: Sequence[str]) -> dict[str, str]:
    """Settings that make reconciliation start within seconds when callbacks may not come.

    That is when the run's own sandbox drops callbacks (``--drop-fraction``), and when real
    DashScope is used without a ``WEBHOOK_PUBLIC_URL`` it could reach. Otherwise nothing.
    """
    dropping = any(arg.startswith("--drop-fraction") for arg in sandbox_args)
    unreachable = "dashscope_api_key" in settings.model_fields_set and not (
        settings.webhook_public_url
    )
    if not (dropping or unreachable):
        return {}
    return {"RECONCILE_AFTER_SECONDS": "5", "SWEEP_INTERVAL_SECONDS": "2"}


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
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Child logs (default: logs/ in ASR_INGEST_HOME).",
)
@click.option("--verbose", "-v", is_flag=True, help="Echo the children's logs too.")
@click.option("--quiet", is_flag=True, hidden=True, help="Accepted for compatibility; the default.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file and line.")
def run(
    paths: tuple[str, ...],
    models: tuple[str, ...],
    params: tuple[str, ...],
    force: bool,
    timeout: float,
    sandbox_args: tuple[str, ...],
    log_dir: Path | None,
    verbose: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Run everything not configured, submit PATH... and wait until every file is settled."""
    settings = load_settings()
    models = models or DEFAULT_MODELS
    parameters = _checked_options(models, params)
    console = Console(stderr=as_json)
    home = home_dir()
    sink = _console_sink(console) if verbose else (lambda _line: None)
    reports: list[SubmitReport] = []
    try:
        with Stack(sink=sink, log_dir=log_dir or log_dir_of(home)) as stack:
            env = start_local_parts(stack, settings, home, sandbox_args)
            settings = load_settings_from(env)  # the in-process submitter sees what children see
            reports = submit_round_robin(
                settings, list(paths) or bundled_samples(), models, parameters, force
            )
            try:
                pairs = follow_runs(settings, reports, console, timeout)
            except KeyboardInterrupt:
                in_flight = _in_flight(settings, reports)
                stack.stop_all()
                _interrupted(console, in_flight)
            rows = build_rows(settings, pairs)
    except KeyboardInterrupt:  # while starting or submitting
        _interrupted(console, [])
    if as_json:
        print_json_rows(rows)
    else:
        render_run_table(console, rows, settings)
    sys.exit(0 if all(row.status in SUCCESS for row in rows) else 1)


SUCCESS = frozenset({"succeeded", "duplicate"})
"""Row statuses that count as done: archived now, or archived by an earlier run."""


def log_dir_of(home: Path) -> Path:
    """Child logs of a run in ``home``."""
    return log_dir(home)


def _checked_options(models: Sequence[str], params: Sequence[str]) -> dict[str, object]:
    """Validate ``--model`` and ``--param`` before anything starts; one-line errors."""
    try:
        for model in models:
            family_of(model)
        parameters = parse_parameters(params)
        check_parameters(parameters)
    except PermanentError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from exc
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--param") from exc
    return parameters


def _in_flight(settings: Settings, reports: Sequence[SubmitReport]) -> list[str]:
    """Task ids of files not final yet (submitted, not archived or failed)."""
    client = connect(settings.redis_url)
    try:
        reader = OutcomeReader(client, settings)
        outcomes = [o for r in reports for o in reader.run(r.run_id)]
    finally:
        client.close()
    return sorted({o.task_id for o in outcomes if o.task_id and not o.final})


def _interrupted(console: Console, task_ids: Sequence[str]) -> NoReturn:
    """Ctrl-C: name the tasks still in flight (``asr-ingest status`` follows them); exit 130."""
    console.print("interrupted; the local parts were stopped")
    for task_id in task_ids:
        console.print(f"in flight: {task_id}  (asr-ingest status {task_id})", markup=False)
    sys.exit(130)


def _console_sink(console: Console) -> Callable[[str], None]:
    def emit(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    return emit
