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
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import boto3
import click
from rich.console import Console

from asr_ingest.home import answers, home_dir, log_dir, redis_dir, socket_path, socket_url
from asr_ingest.outcomes import build_rows, follow_runs, print_json_rows, render_run_table
from asr_ingest.stack import Child, ChildSpec, Stack
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
from asr_ingest.submit_cmd import SubmitReport, enqueue_batches, plan_run
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
WORKER_THREADS = 16
"""Threads of the local worker. A submit task holds one while it waits for its family's turn,
so with the one-file Qwen tasks some 15 wait at once, 1.5 s of turns booked ahead, and the
uploads of the next tasks and the archive tasks still find threads."""
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


def _create_media_bucket(endpoint: str) -> None:
    """The OSS media bucket in moto (oss2 reaches it through an IP endpoint)."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AWS_LOCAL["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_LOCAL["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS_LOCAL["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=MEDIA_BUCKET)


@dataclass
class LocalParts:
    """What :func:`launch_local_parts` started: the environment every part shares, and the
    webhook and worker, launched but not yet ready (:meth:`Stack.wait_ready`)."""

    env: dict[str, str]
    starting: list[Child]


def start_local_parts(
    stack: Stack,
    settings: Settings,
    home: Path,
    sandbox_args: Sequence[str] = (),
) -> dict[str, str]:
    """Start what ``settings`` does not configure and wait until all of it is ready; the
    environment every part then shares (see :func:`launch_local_parts`)."""
    parts = launch_local_parts(stack, settings, home, sandbox_args)
    stack.wait_ready(parts.starting)
    return parts.env


def launch_local_parts(
    stack: Stack,
    settings: Settings,
    home: Path,
    sandbox_args: Sequence[str] = (),
) -> LocalParts:
    """Start what ``settings`` does not configure; Redis, moto and the sandbox ready, the
    webhook and worker launched (they take longest: their caller may submit meanwhile).

    The stores and the sandbox start together. Configured Redis and broker URLs are passed
    on as they are. The embedded Redis keeps its data in ``home`` (:mod:`asr_ingest.home`),
    so state outlives the run. Raises :class:`asr_ingest.stack.StackError` when a part does
    not become ready.
    """
    web, public_url = _webhook_address(settings)
    env, specs = _store_specs(settings, home)
    env["WEBHOOK_PUBLIC_URL"] = public_url
    if "dashscope_api_key" not in settings.model_fields_set:
        specs.append(sandbox_spec(free_port(), public_url, extra_args=sandbox_args))
    started = {child.spec.name: child for child in stack.start_many(specs)}
    if "s3" in started:
        _create_media_bucket(env["OSS_ENDPOINT"])
    if "sandbox" in started:
        env.update(sandbox_env(started["sandbox"]))
    env.update(_reconcile_soon(settings, sandbox_args))
    try:
        worker = worker_spec(env, beat_schedule=home / "beat-schedule", concurrency=WORKER_THREADS)
        specs = [webhook_spec(web, env), worker]
        return LocalParts(env, stack.launch_many(specs))
    finally:
        if isinstance(web, socket.socket):
            web.close()  # gunicorn holds its own copy


def _store_specs(settings: Settings, home: Path) -> tuple[dict[str, str], list[ChildSpec]]:
    """Redis, the broker, the media store and the archive: the environment naming them, and
    the children to start for those not configured (an embedded Redis already serving
    ``home`` is used as it is)."""
    configured = settings.model_fields_set
    env = {"REDIS_URL": settings.redis_url, "CELERY_BROKER_URL": settings.broker_url}
    specs: list[ChildSpec] = []
    if "redis_url" not in configured:
        env["REDIS_URL"] = socket_url(home)
        env["CELERY_BROKER_URL"] = broker_url_for(env["REDIS_URL"])
        if not answers(env["REDIS_URL"]):
            specs.append(redis_spec(redis_dir(home), socket_path=socket_path(home)))
    if "celery_broker_url" in configured:
        env["CELERY_BROKER_URL"] = settings.broker_url
    if "media_url" not in configured:
        store = moto_spec(free_port())
        specs.append(store)
        env.update(LOCAL_KEYS, MEDIA_URL=f"oss://{MEDIA_BUCKET}/uploads")
        env["OSS_ENDPOINT"] = str(store.url)
    if "archive_urls" not in configured:
        env["ARCHIVE_URLS"] = (Path.cwd() / "archive").as_uri()
    return env, specs


def _webhook_address(settings: Settings) -> tuple[int | socket.socket, str]:
    """Where the local webhook listens (a port, or a listening socket held from now on so no
    other process can take it) and the public URL events are signed for."""
    public_url = settings.webhook_public_url
    if public_url and urlsplit(public_url).port:  # e.g. a tunnel's URL with the local port
        return int(urlsplit(public_url).port or 0), public_url
    web = listening_socket()
    local_url = f"http://127.0.0.1:{web.getsockname()[1]}/callbacks/eventbridge"
    return web, public_url or local_url


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

    Every run is planned first, then all batches are enqueued together, interleaved
    (:func:`interleaved`). Rejected paths are recorded with the first model's run so they
    appear in its outcomes.
    """
    accepted, rejected = walk(paths)
    groups: list[list[str]] = [[] for _ in models]
    for n, media in enumerate(accepted):
        groups[n % len(models)].append(media.path)
    groups[0].extend(rejection.path for rejection in rejected)
    reports = [
        plan_run(settings, group, model, dict(parameters), force)
        for model, group in zip(models, groups, strict=True)
        if group
    ]
    enqueue_batches(settings, interleaved(reports))
    return reports


def interleaved(reports: Sequence[SubmitReport]) -> list[tuple[str, int]]:
    """Every batch of ``reports`` as ``(run id, batch number)``, each run's spread evenly over
    the whole queue: batch n of a run of B batches sits at fraction (n + 0.5) / B.

    The worker takes the queue in order, about as fast as the run with the most submissions
    (the rate floor's family) is paced, so that run starts at once and never waits behind
    the others, and the large batches of the other families (100 uploads each) come one at a
    time over the run instead of all at its start, where their uploads would slow the pacing.
    """
    keyed = [
        ((n + 0.5) / report.batches, order, report.run_id, n)
        for order, report in enumerate(reports)
        for n in range(report.batches)
    ]
    return [(run_id, n) for _, _, run_id, n in sorted(keyed)]


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
            parts = launch_local_parts(stack, settings, home, sandbox_args)
            settings = load_settings_from(parts.env)  # the submitter sees what children see
            reports = submit_round_robin(  # queued in Redis while the worker starts
                settings, list(paths) or bundled_samples(), models, parameters, force
            )
            stack.wait_ready(parts.starting)
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
