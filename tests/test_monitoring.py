"""Alert and recording rules, the Grafana dashboard, and a real Prometheus scraping real processes.

``promtool`` and ``prometheus`` come from Debian's ``prometheus`` package (``.ci/run`` installs
it). The scrape test runs the webhook under gunicorn and a Celery worker serving its metrics,
drives one good task through the sandbox, one archive failure and one rejected delivery, then
has Prometheus evaluate every rule and dashboard expression against what it scraped.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from asr_ingest.stack import Stack
from asr_ingest.starters import free_port, webhook_spec
from core.queues import ARCHIVE_QUEUE, ARCHIVE_TASK
from core.settings import load_settings
from core.store import ReceiptStore
from sandbox.server import Sandbox
from tests.fixtures.sandbox import CallbackReceiver, MediaServer
from tests.fixtures.worker import WorkerFactory, broker_url_for, wait_until
from tests.sandbox.test_callbacks import submit
from tests.support import task_events as te
from worker import create_celery

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "asr-ingest.json"
RULE_FILES = ("recording.yml", "alerts.yml")
OURS = re.compile(r"(?<![:\w])((?:asr|webhook)_[a-z0-9_]+)\b(?!:)")
"""Our metric names in PromQL; names inside a recording rule's ``asr:...:...`` do not count."""
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus)"
)


def rule_expressions() -> list[str]:
    """The ``expr`` of every recording and alerting rule."""
    found = []
    for name in RULE_FILES:
        for group in yaml.safe_load((PROMETHEUS_DIR / name).read_text())["groups"]:
            found += [rule["expr"] for rule in group["rules"]]
    return found


def dashboard() -> dict[str, Any]:
    """The parsed Grafana dashboard."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_expressions() -> list[str]:
    """The PromQL of every panel target."""
    return [t["expr"] for panel in dashboard()["panels"] for t in panel["targets"]]


def metric_names(expressions: list[str]) -> set[str]:
    """Our raw metric names used in ``expressions`` (recording rule names excluded)."""
    return {name for expr in expressions for name in OURS.findall(expr)}


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    """``promtool check rules`` accepts both rule files."""
    files = [str(PROMETHEUS_DIR / name) for name in RULE_FILES]
    done = subprocess.run(
        [PROMTOOL, "check", "rules", *files], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_alert_unit_tests_pass() -> None:
    """``promtool test rules``: alerts fire on their scenarios and stay quiet otherwise."""
    tests = PROMETHEUS_DIR / "tests" / "alerts_test.yml"
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_imports() -> None:
    """The dashboard has what Grafana's import needs: uid, title, panels with targets."""
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["type"] in {"timeseries", "stat"} and set(panel["gridPos"]) == {
            "x",
            "y",
            "w",
            "h",
        }
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])


def test_every_alert_says_what_to_do() -> None:
    """Each alert has a severity, a summary and a description."""
    for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


class PrometheusServer:
    """A real ``prometheus`` scraping the given jobs every second, with our rule files."""

    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        for name in RULE_FILES:
            shutil.copy(PROMETHEUS_DIR / name, workdir / name)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": list(RULE_FILES),
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self._log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address={self.url[7:]}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query's JSON answer (``status``, ``data``)."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        loaded: dict[str, Any] = answer.json()
        return loaded

    def stop(self) -> None:
        """Stop the server."""
        self.process.terminate()
        self.process.wait(10)
        self._log.close()


@pytest.fixture
def running_pipeline(
    tmp_path: Path,
    redis_url: str,
    make_sandbox: Callable[..., Sandbox],
    celery_worker_factory: WorkerFactory,
    callback_receiver: CallbackReceiver,
) -> Iterator[tuple[str, str, Sandbox]]:
    """A gunicorn webhook and a Celery worker (metrics on a port) for one sandbox, announcing
    to a receiver that fails once: their ``host:port`` metrics addresses and the sandbox."""
    callback_receiver.statuses[:] = [503]
    web_port, metrics_port = free_port(), free_port()
    target = f"http://127.0.0.1:{web_port}/callbacks/eventbridge"
    box = make_sandbox(callback_url=target)
    multiproc = tmp_path / "web-metrics"
    multiproc.mkdir()
    env = {
        **box.env,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": broker_url_for(redis_url),
        "WEBHOOK_PUBLIC_URL": target,
        "ARCHIVE_URLS": (tmp_path / "archive").as_uri(),
        "NOTIFY_URL": callback_receiver.url,
        "NOTIFY_SECRET": "whsec_" + base64.b64encode(b"monitoring test secret").decode(),
        "LOG_FORMAT": "json",
    }
    stack = Stack(sink=lambda _line: None, handle_signals=False, grace_s=5)
    stack.start(webhook_spec(web_port, {**env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}))
    celery_worker_factory({**env, "WORKER_METRICS_PORT": str(metrics_port)})
    yield f"127.0.0.1:{web_port}", f"127.0.0.1:{metrics_port}", box
    stack.stop_all()


@pytest.mark.e2e
@pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian package prometheus)"
)
def test_prometheus_evaluates_every_expression_on_scraped_metrics(
    tmp_path: Path,
    running_pipeline: tuple[str, str, Sandbox],
    media_server: MediaServer,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    """Every rule and panel expression is valid PromQL, and every metric it names was scraped."""
    web, worker, box = running_pipeline
    task_id = submit(box, "fun-asr", [media_server.url_for("hello.wav")])
    wait_until(
        lambda: redis_client.hget(f"asr:receipt:{task_id}", "state") == b"archived", 60, "archive"
    )
    bad = te.event(
        "t-bad", "fun-asr", te.batch_output("t-bad", [te.ok("https://elsewhere.example/r.json")])
    )
    ReceiptStore(redis_client, 600).claim("t-bad", bad, event_id="e")
    settings = load_settings(redis_url=redis_url, celery_broker_url=broker_url_for(redis_url))
    create_celery(settings).send_task(ARCHIVE_TASK, args=["t-bad"], queue=ARCHIVE_QUEUE)
    httpx.post(f"http://{web}/callbacks/eventbridge", content=b"{}", timeout=5)  # unsigned: 401
    wait_until(
        lambda: redis_client.hget("asr:receipt:t-bad", "state") == b"dead", 60, "dead letter"
    )
    prometheus = PrometheusServer(
        tmp_path, {"asr-ingest-webhook": web, "asr-ingest-worker": worker}
    )
    try:
        wait_until(lambda: _all_up(prometheus), 60, "both targets up")
        time.sleep(3)  # a few scrapes and rule evaluations
        expressions = rule_expressions() + dashboard_expressions()
        failed = [e for e in expressions if prometheus.query(e)["status"] != "success"]
        assert failed == []
        missing = [
            name
            for name in sorted(metric_names(expressions))
            if not prometheus.query(f'count({{__name__="{name}"}})')["data"]["result"]
        ]
        assert missing == [], ", ".join(missing)
    finally:
        prometheus.stop()


def _all_up(prometheus: PrometheusServer) -> bool:
    try:
        result = prometheus.query("up")["data"]["result"]
    except httpx.HTTPError:
        return False
    return len(result) == 2 and all(sample["value"][1] == "1" for sample in result)
