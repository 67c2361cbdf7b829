"""The worker's Kubernetes liveness probe runs the consumption check with consistent timings."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from asr_ingest.health_cmd import INSPECT_TIMEOUT_SECONDS

WORKER_YAML = Path(__file__).resolve().parents[2] / "deploy/k8s/worker.yaml"


def test_worker_liveness_probe_runs_health_for_this_pod_within_its_timeout() -> None:
    """The exec probe checks node celery@$HOSTNAME; the command's wait (ping + two inspect
    calls) fits in timeoutSeconds, and three failures span more than a broker restart."""
    deployment = next(yaml.safe_load_all(WORKER_YAML.read_text()))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    probe = container["livenessProbe"]
    argv = shlex.split(probe["exec"]["command"][-1])
    assert argv[:3] == ["exec", "asr-ingest", "health"]
    assert argv[argv.index("--worker") + 1] == "celery@$HOSTNAME"
    wait_s = float(argv[argv.index("--timeout") + 1])
    assert wait_s + 2 * INSPECT_TIMEOUT_SECONDS + 5 <= probe["timeoutSeconds"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 120
