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
from prometheus_client import REGISTRY

from asr_ingest.stack import Stack
from asr_ingest.starters import free_port, webhook_spec
from core.queues import ARCHIVE_QUEUE, ARCHIVE_TASK
from core.settings import SettingsError, load_settings
from core.store import Receipt, ReceiptStore
from sandbox.server import Sandbox
from tests.fixtures.sandbox import CallbackReceiver, MediaServer
from tests.fixtures.worker import WorkerFactory, broker_url_for, wait_until
from tests.sandbox.test_callbacks import submit
from tests.support import task_events as te
from worker import create_celery, metrics
from worker.app import SHUTDOWN_MARGIN_SECONDS, celery_config
from worker.archiving.dlq import DeadLetters
from worker.dashscope import DashScopeClient

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
    except (httpx.HTTPError, ValueError):  # not listening yet, or starting (not JSON yet)
        return False
    return len(result) == 2 and all(sample["value"][1] == "1" for sample in result)


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    """The value of ``name`` in this process's default registry (0.0 when absent)."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_default_timing_settings_are_accepted() -> None:
    """The defaults pass the start-up check, and the production settings are in the config."""
    settings = load_settings(celery_broker_url="memory://")
    create_celery(settings)
    config = celery_config(settings)
    assert config["task_time_limit"] < settings.broker_visibility_timeout_seconds
    assert config["worker_prefetch_multiplier"] == 1
    assert config["worker_soft_shutdown_timeout"] == 45.0
    assert config["worker_max_tasks_per_child"] == 1000
    assert config["worker_max_memory_per_child"] == 512 * 1024


def test_clashing_timing_settings_fail_create_celery_in_one_line() -> None:
    """A lease and countdowns too long for the visibility timeout: one line naming each."""
    settings = load_settings(
        celery_broker_url="memory://",
        broker_visibility_timeout_seconds=60,
        archive_lease_seconds=60,
        dashscope_breaker_probe_seconds=31,
    )
    with pytest.raises(SettingsError) as caught:
        create_celery(settings)
    message = str(caught.value)
    assert "\n" not in message
    for name in (
        "BROKER_VISIBILITY_TIMEOUT_SECONDS",
        "ARCHIVE_LEASE_SECONDS",
        "ARCHIVE_RETRY_MAX_SECONDS",
        "DASHSCOPE_BREAKER_PROBE_SECONDS",
    ):
        assert name in message


def test_soft_shutdown_ends_before_the_grace_periods() -> None:
    """k8s and compose remap SIGTERM and wait longer than the soft shutdown plus its margin."""
    soft = load_settings().worker_soft_shutdown_seconds
    pod = next(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "worker.yaml").read_text()))
    spec = pod["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= soft + SHUTDOWN_MARGIN_SECONDS
    env = {item["name"]: item.get("value") for item in spec["containers"][0]["env"]}
    assert env["REMAP_SIGTERM"] == "SIGQUIT"
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    assert int(worker["stop_grace_period"].removesuffix("s")) >= soft + SHUTDOWN_MARGIN_SECONDS
    assert worker["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
    configmap = yaml.safe_load((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text())
    assert "WORKER_SOFT_SHUTDOWN_SECONDS" not in configmap.get("data", {})


def test_prime_makes_rare_event_series_exist_at_zero() -> None:
    """Throttling, reconciliation, breaker and budget series exist before any event."""
    metrics.prime()
    for name, labels in (
        ("asr_dashscope_throttled_total", {"operation": "submit", "code": "Throttling"}),
        ("asr_reconcile_tasks_found_total", {"pass": "account"}),
        ("asr_dashscope_breaker_transitions_total", {"state": "open", "code": "Arrearage"}),
        ("asr_ratelimit_tokens_total", {"bucket": "query"}),
    ):
        assert REGISTRY.get_sample_value(name, labels) is not None, name


def test_throttling_answers_are_counted_by_operation_and_code() -> None:
    """A 429 RateQuota then a 200: one count; an unknown throttling code counts as other."""
    answers = iter(
        [
            httpx.Response(429, json={"code": "Throttling.RateQuota", "message": "slow down"}),
            httpx.Response(200, json={"output": {"task_status": "RUNNING"}}),
            httpx.Response(429, json={"code": "Throttling.Made.Up", "message": "x"}),
            httpx.Response(200, json={"output": {"task_status": "RUNNING"}}),
        ]
    )
    transport = httpx.MockTransport(lambda _request: next(answers))
    labels = {"operation": "query", "code": "Throttling.RateQuota"}
    other = {"operation": "query", "code": "other"}
    before = _sample("asr_dashscope_throttled_total", labels)
    before_other = _sample("asr_dashscope_throttled_total", other)
    with DashScopeClient("https://ds.example/api/v1", "k", transport=transport, backoff_s=0) as ds:
        ds.query("t-1")
        ds.query("t-2")
    assert _sample("asr_dashscope_throttled_total", labels) == before + 1
    assert _sample("asr_dashscope_throttled_total", other) == before_other + 1


def test_dead_letters_written_are_counted_by_kind_and_reason(redis_client: redis.Redis) -> None:
    """Each dead letter written counts once under its kind and reason."""
    labels = {"kind": "notify", "reason": "notify_rejected"}
    before = _sample("asr_dead_letters_written_total", labels)
    DeadLetters(redis_client, key="asr:notify:dlq").add("t-1", "notify_rejected", 3, "no")
    assert _sample("asr_dead_letters_written_total", labels) == before + 1


def test_receipt_lag_is_observed_once_per_task() -> None:
    """end_time to receipt, on the first attempt of an unworked receipt only."""
    body = json.loads(te.event("t-lag", "fun-asr", None))
    body["data"]["end_time"] = "2025-10-25 09:45:16.000"  # China time: 01:45:16 UTC
    ended = 1761356716.0
    receipt = Receipt("t-lag", json.dumps(body).encode(), ended + 42, "e", "fun-asr",
                      "eventbridge", "enqueued")  # fmt: skip
    labels = {"source": "eventbridge"}
    count = _sample("asr_event_receipt_lag_seconds_count", labels)
    total = _sample("asr_event_receipt_lag_seconds_sum", labels)
    metrics.receipt_lag(receipt, attempt=1, replay=False)
    metrics.receipt_lag(receipt, attempt=2, replay=False)  # a retry: not again
    metrics.receipt_lag(receipt, attempt=1, replay=True)  # a replay: not again
    assert _sample("asr_event_receipt_lag_seconds_count", labels) == count + 1
    assert _sample("asr_event_receipt_lag_seconds_sum", labels) == pytest.approx(total + 42)
