"""Deployment files parse and agree with the contract, the Procfile and the settings.

The contract's facts are read from docs/contract.md ("Processes", "Environment variables").
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import hcl2
import pytest
import yaml

from asr_ingest.home import HOME_VARIABLE
from asr_ingest.starters import beat_spec, webhook_spec, worker_spec
from core.queues import ARCHIVE_QUEUE, SUBMIT_QUEUE
from core.settings import Settings
from core.store import ReceiptState
from tests.faults.proxy import check, nginx_binary, render
from webhook import gunicorn_conf

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
TERRAFORM = DEPLOY / "terraform"
CONTRACT = ROOT / "docs" / "contract.md"

COMMANDS = {
    "web": "gunicorn webhook.wsgi:app",
    "worker": "celery -A worker.celery_app worker -Q archive,submit",
    "beat": "celery -A worker.celery_app beat",
    "flower": "celery -A worker.celery_app flower",
}


def contract_variables() -> list[str]:
    """The variables of docs/contract.md's "Environment variables" table, in order."""
    text = CONTRACT.read_text()
    rows = re.findall(r"^\| (`[A-Z0-9_]+`(?:, `[A-Z0-9_]+`)*) \|", text, re.MULTILINE)
    return [name for row in rows for name in re.findall(r"`([A-Z0-9_]+)`", row)]


CONTRACT_VARIABLES = contract_variables()
CLI_VARIABLES = {"ASR_INGEST_HOME"}
"""Contract variables read by the command line only (asr_ingest.home), not by the services."""
IMPLEMENTED_VARIABLES = CONTRACT_VARIABLES
AWS_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
SETTING_VARIABLES = sorted(name.upper() for name in Settings.model_fields)
WEB_PORT, FLOWER_PORT = 8000, 5555
PROXY_PORT = 8080  # nginx's listen port in deploy/nginx/asr-ingest.conf
GUNICORN_CONF = "webhook/gunicorn_conf.py"  # the Procfile loads it by path, from the root
IMAGE_GUNICORN_CONF = "/etc/asr-ingest/gunicorn_conf.py"  # where the image copies it
NGINX_SITE = DEPLOY / "nginx" / "asr-ingest.conf"
MAX_BODY_BYTES = Settings.model_fields["webhook_max_body_bytes"].default


def procfile() -> dict[str, str]:
    """Procfile entries: process name → command line."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def compose() -> dict[str, Any]:
    """The parsed docker-compose file."""
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def manifests() -> list[dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s/*.yaml."""
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    """The manifest of ``kind`` named ``name``."""
    found = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(deployment: str) -> dict[str, Any]:
    """The single container of a Deployment."""
    containers: list[dict[str, Any]] = find("Deployment", deployment)["spec"]["template"]["spec"][
        "containers"
    ]
    assert len(containers) == 1
    return containers[0]


def option(argv: list[str], flag: str) -> str:
    """The value following ``flag`` in ``argv``."""
    return argv[argv.index(flag) + 1]


def nginx_directives() -> dict[str, list[str]]:
    """Directive name → the values it is given, in deploy/nginx/asr-ingest.conf."""
    found: dict[str, list[str]] = {}
    for line in NGINX_SITE.read_text().splitlines():
        code = line.split("#", 1)[0].strip()
        if code.endswith(";"):
            name, _, value = code[:-1].partition(" ")
            found.setdefault(name, []).append(value.strip())
    return found


def nginx_size(value: str) -> int:
    """Bytes of an nginx size ("1m", "8k", "512")."""
    units = {"k": 1024, "m": 1024 * 1024, "g": 1024**3}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].isalpha() else int(value)


def env_example() -> dict[str, str]:
    """Names and values in .env.example, commented ("# NAME=value") or not."""
    pattern = re.compile(r"^(?:# )?([A-Z][A-Z0-9_]*)=(.*)$")
    matches = (pattern.match(line) for line in (ROOT / ".env.example").read_text().splitlines())
    return {m[1]: m[2] for m in matches if m}


def test_procfile_commands_follow_contract() -> None:
    """Procfile has web, worker, beat and flower, each running the contract's command."""
    entries = procfile()
    assert set(entries) == set(COMMANDS)
    for name, command in COMMANDS.items():
        assert entries[name].startswith(command + " "), name
    assert f"${{PORT:-{WEB_PORT}}}" in entries["web"]
    assert f"${{FLOWER_PORT:-{FLOWER_PORT}}}" in entries["flower"]


def test_compose_runs_the_contract_processes() -> None:
    """docker-compose has redis, proxy, web, worker, beat and flower; the contract's commands."""
    services = compose()["services"]
    assert set(services) == {"redis", "proxy", *COMMANDS}
    for name, command in COMMANDS.items():
        assert shlex.join(services[name]["command"]).startswith(command), name
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"


def test_compose_redis_never_evicts_and_keeps_aof() -> None:
    """Compose's Redis runs with maxmemory-policy noeviction and appendonly yes, on a volume."""
    redis = compose()["services"]["redis"]
    argv = [str(arg) for arg in redis["command"]]
    assert option(argv, "--maxmemory-policy") == "noeviction"
    assert option(argv, "--appendonly") == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_compose_ports_match_binds() -> None:
    """Published ports are those the processes bind: nginx's on the web port, and flower's."""
    services = compose()["services"]
    assert option(services["web"]["command"], "--bind") == f"0.0.0.0:{WEB_PORT}"
    assert services["proxy"]["ports"] == [f"{WEB_PORT}:{PROXY_PORT}"]
    assert nginx_directives()["listen"] == [str(PROXY_PORT)]
    assert f"--port={FLOWER_PORT}" in services["flower"]["command"]
    assert f"{FLOWER_PORT}:{FLOWER_PORT}" in services["flower"]["ports"]
    for name in COMMANDS:
        url = services[name]["environment"]["REDIS_URL"]
        assert urlsplit(url).hostname == "redis", name


def test_compose_puts_the_buffering_proxy_in_front_of_gunicorn() -> None:
    """Compose publishes only nginx (deploy/nginx) for the webhook; it proxies to web's port."""
    services = compose()["services"]
    assert "ports" not in services["web"]
    assert services["web"]["expose"] == [str(WEB_PORT)]
    mount = "./nginx/asr-ingest.conf:/etc/nginx/conf.d/default.conf:ro"
    assert services["proxy"]["volumes"] == [mount]
    assert (DEPLOY / mount.split(":")[0]).resolve() == NGINX_SITE
    assert "web" in services["proxy"]["depends_on"]
    assert nginx_directives()["server"] == [f"web:{WEB_PORT}"]


def test_nginx_buffers_whole_requests_within_limits() -> None:
    """nginx buffers bodies up to WEBHOOK_MAX_BODY_BYTES, with header and body read timeouts."""
    found = nginx_directives()
    assert found["proxy_request_buffering"] == ["on"]
    assert nginx_size(found["client_max_body_size"][0]) == MAX_BODY_BYTES
    assert nginx_size(found["client_body_buffer_size"][0]) >= MAX_BODY_BYTES
    assert found["client_header_timeout"] and found["client_body_timeout"]
    headers = {value.split()[0] for value in found["proxy_set_header"]}
    assert {"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Host"} <= headers


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    """``nginx -t`` accepts deploy/nginx/asr-ingest.conf (upstream and listen made local)."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does)")
    result = check(binary, render(tmp_path, listen_port=18080, upstream_port=18000))
    assert result.returncode == 0, result.stderr


def test_web_runs_gevent_workers_with_read_deadlines() -> None:
    """Every web command loads webhook/gunicorn_conf.py: gevent, bounded connections, deadlines."""
    assert option(procfile()["web"].split(), "-c") == GUNICORN_CONF
    text = (DEPLOY / "Dockerfile").read_text()
    assert f"COPY --from=build /src/{GUNICORN_CONF} {IMAGE_GUNICORN_CONF}" in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert cmd is not None
    commands = [
        yaml.safe_load(cmd[1]),
        compose()["services"]["web"]["command"],
        container("asr-ingest-web")["command"],
    ]
    assert [option(argv, "-c") for argv in commands] == [IMAGE_GUNICORN_CONF] * 3
    assert gunicorn_conf.worker_class == "gevent"
    assert 0 < gunicorn_conf.worker_connections <= 1000
    assert gunicorn_conf.keepalive > 0  # bounds reading the request line and headers
    assert 0 < gunicorn_conf.BODY_READ_DEADLINE_SECONDS <= 30


def test_k8s_ingress_buffers_requests_for_the_public_url() -> None:
    """The Ingress serves WEBHOOK_PUBLIC_URL's path from the Service, buffering 1 MiB bodies."""
    ingress = find("Ingress", "asr-ingest-web")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "on"
    assert nginx_size(notes["nginx.ingress.kubernetes.io/proxy-body-size"]) == MAX_BODY_BYTES
    public = urlsplit(find("ConfigMap", "asr-ingest")["data"]["WEBHOOK_PUBLIC_URL"])
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert (rule["host"], path["path"]) == (public.hostname, public.path)
    assert path["backend"]["service"] == {"name": "asr-ingest-web", "port": {"name": "http"}}
    assert public.hostname in ingress["spec"]["tls"][0]["hosts"]


def test_dockerfile_installs_every_package_and_runs_the_webhook() -> None:
    """The Dockerfile copies every package, exposes the ports and defaults to the webhook."""
    text = (DEPLOY / "Dockerfile").read_text()
    for package in ("webhook", "worker", "sandbox", "asr_ingest"):
        assert re.search(rf"^COPY {package} ", text, re.MULTILINE), package
    assert re.search(rf"^EXPOSE .*\b{WEB_PORT}\b.*\b{FLOWER_PORT}\b", text, re.MULTILINE)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert cmd is not None
    argv: list[str] = yaml.safe_load(cmd[1])
    assert shlex.join(argv).startswith(COMMANDS["web"])
    assert option(argv, "--bind") == f"0.0.0.0:{WEB_PORT}"
    assert "USER app" in text


def test_docker_build_context_keeps_what_the_dockerfile_copies() -> None:
    """Every path the Dockerfile copies from the context is re-included by its .dockerignore."""
    text = (DEPLOY / "Dockerfile").read_text()
    sources = re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE)
    copied = {path.rstrip("/") for line in sources for path in line.split()}
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore
    assert copied == kept


def test_k8s_manifests_are_well_formed() -> None:
    """Every manifest has apiVersion, kind and a name; Deployment selectors match their pods."""
    docs = manifests()
    assert docs
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
        if doc["kind"] == "Deployment":
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_commands_follow_contract() -> None:
    """The web, worker, beat and flower containers run the contract's commands."""
    for name, command in COMMANDS.items():
        argv = container(f"asr-ingest-{name}")["command"]
        assert shlex.join(argv).startswith(command), name
    worker_argv = container("asr-ingest-worker")["command"]
    assert option(worker_argv, "-Q").split(",") == [ARCHIVE_QUEUE, SUBMIT_QUEUE]


def test_k8s_webhook_probes_and_service() -> None:
    """The webhook probes /livez and /readyz on the port gunicorn binds; the Service targets it."""
    web = container("asr-ingest-web")
    port = next(p for p in web["ports"] if p["name"] == "http")
    assert port["containerPort"] == WEB_PORT
    assert option(web["command"], "--bind") == f"0.0.0.0:{WEB_PORT}"
    assert web["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert web["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = find("Service", "asr-ingest-web")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pod_labels = find("Deployment", "asr-ingest-web")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_k8s_scaling_targets() -> None:
    """The HPA scales the webhook; KEDA scales workers on the Redis list of the archive queue."""
    hpa = find("HorizontalPodAutoscaler", "asr-ingest-web")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "asr-ingest-web"
    assert hpa["spec"]["minReplicas"] >= 2
    keda = find("ScaledObject", "asr-ingest-worker")
    assert keda["spec"]["scaleTargetRef"]["name"] == "asr-ingest-worker"
    (trigger,) = keda["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == ARCHIVE_QUEUE
    redis_url = urlsplit(find("ConfigMap", "asr-ingest")["data"]["REDIS_URL"])
    assert trigger["metadata"]["address"] == f"{redis_url.hostname}:{redis_url.port}"
    assert trigger["metadata"]["databaseIndex"] == redis_url.path.strip("/")


def test_k8s_beat_is_a_single_replica() -> None:
    """Beat runs as exactly one replica and is replaced with Recreate, never two at once."""
    beat = find("Deployment", "asr-ingest-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"


def test_k8s_configuration_names_are_settings() -> None:
    """The ConfigMap and container env use only variables the settings (or AWS, or Celery's
    ``REMAP_SIGTERM``: the worker's soft shutdown, worker/app.py) read."""
    known = set(SETTING_VARIABLES) | AWS_VARIABLES | {"REMAP_SIGTERM"}
    names = set(find("ConfigMap", "asr-ingest")["data"])
    for name in COMMANDS:
        names |= {item["name"] for item in container(f"asr-ingest-{name}").get("env", [])}
    assert names <= known, names - known


def test_env_example_lists_every_variable() -> None:
    """.env.example names every contract and settings variable, and nothing else."""
    names = set(env_example())
    assert set(IMPLEMENTED_VARIABLES) - CLI_VARIABLES <= names
    assert set(SETTING_VARIABLES) <= names, set(SETTING_VARIABLES) - names
    assert names <= set(SETTING_VARIABLES) | AWS_VARIABLES


def test_env_example_values_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value written in .env.example (default or example) is accepted by the settings."""
    values = {k: v for k, v in env_example().items() if v and k in SETTING_VARIABLES}
    assert "SUBMIT_RATES" in values
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.submit_batch_size == int(values["SUBMIT_BATCH_SIZE"])


def test_readme_configuration_table_is_complete() -> None:
    """The README's configuration table has a row for every contract and settings variable."""
    readme = (ROOT / "README.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)`", readme, re.MULTILINE))
    missing = (set(IMPLEMENTED_VARIABLES) | set(SETTING_VARIABLES)) - rows
    assert not missing, missing


def test_readme_covers_operations() -> None:
    """The README names the two commands, the EventBridge facts, probes and receipt states."""
    readme = (ROOT / "README.md").read_text()
    facts = [
        "make run", "make test", "make check", "make bench", "acs.dashscope",
        "dashscope:System:AsyncTaskFinish", "NTP", "/livez", "/readyz", "/metrics", "Flower",
        "RabbitMQ", "dead-letter",
    ]  # fmt: skip
    assert [fact for fact in facts if fact not in readme] == []
    states = get_args(ReceiptState)
    assert [state for state in states if f"`{state}`" not in readme] == []


def test_readme_says_what_sits_in_front_of_the_webhook() -> None:
    """The README names the gunicorn config, the nginx config, the Ingress and the 408 answer."""
    readme = (ROOT / "README.md").read_text()
    facts = [
        GUNICORN_CONF, IMAGE_GUNICORN_CONF, "deploy/nginx/asr-ingest.conf", "Ingress", "gevent",
        '408 {"error": "request_timeout"}', "tests/faults/test_slow_clients.py",
    ]  # fmt: skip
    assert [fact for fact in facts if fact not in readme] == []


def test_starters_follow_contract(tmp_path: Path) -> None:
    """The local stack's specs run the contract's webhook, worker and beat commands."""
    env = {"REDIS_URL": "redis://127.0.0.1:6379/0"}
    specs = {
        "web": webhook_spec(8123, env),
        "worker": worker_spec(env),
        "beat": beat_spec(env, tmp_path / "schedule"),
    }
    for name, spec in specs.items():
        argv = [Path(spec.argv[0]).name, *spec.argv[1:]]
        assert shlex.join(argv).startswith(COMMANDS[name]), name
    assert specs["web"].url == "http://127.0.0.1:8123"


def test_contract_processes_are_the_procfile_commands() -> None:
    """The commands used here are those of docs/contract.md's "Processes" table."""
    table = re.findall(
        r"^\| \w+ \| `([^`]+)`[^|]*\| `(\w+)` \|$", CONTRACT.read_text(), re.MULTILINE
    )
    assert {name: command for command, name in table} == COMMANDS


def test_every_contract_variable_is_read() -> None:
    """Each contract variable is a setting of the services or read by the command line."""
    assert {HOME_VARIABLE} == CLI_VARIABLES
    assert set(CONTRACT_VARIABLES) - CLI_VARIABLES <= set(SETTING_VARIABLES)


def hcl_text(value: object) -> str:
    """A python-hcl2 string value without its quotes or heredoc markers."""
    text = str(value)
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1]
    heredoc = re.fullmatch(r"<<-?(\w+)\n(.*)\n\s*\1", text, re.DOTALL)
    return heredoc[2] if heredoc else text


def terraform_blocks(kind: str) -> dict[str, Any]:
    """Blocks of ``kind`` (``resource``, ``variable``, ...) in deploy/terraform/*.tf, by
    ``type.name`` (resources) or name, with python-hcl2's quoting removed from the keys."""
    found: dict[str, Any] = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        for block in hcl2.load(path.open()).get(kind, []):
            for first, body in block.items():
                if kind == "resource":
                    for name, inner in body.items():
                        found[f"{hcl_text(first)}.{hcl_text(name)}"] = inner
                else:
                    found[hcl_text(first)] = body
    return found


def test_terraform_rule_filters_transcription_finishes() -> None:
    """The EventBridge rule matches acs.dashscope AsyncTaskFinish of transcription keys only."""
    rule = terraform_blocks("resource")["alicloud_event_bridge_rule.transcription_finished"]
    assert hcl_text(rule["event_bus_name"]) == "${var.event_bus_name}"
    assert json.loads(hcl_text(rule["filter_pattern"])) == {
        "source": ["acs.dashscope"],
        "type": ["dashscope:System:AsyncTaskFinish"],
        "data": {"user_api_unique_key": [{"prefix": "apikey:v1:audio:asr:transcription:"}]},
    }


def test_terraform_target_retries_for_a_day_with_dead_letters() -> None:
    """The HTTP target posts the complete event to var.webhook_url with exponential retry and
    a dead-letter queue."""
    rule = terraform_blocks("resource")["alicloud_event_bridge_rule.transcription_finished"]
    (target,) = rule["targets"]
    assert hcl_text(target["push_retry_strategy"]) == "EXPONENTIAL_DECAY_RETRY"
    assert hcl_text(target["endpoint"]) == "${var.webhook_url}"
    assert hcl_text(target["type"]) == "https"
    (dead_letter,) = target["dead_letter_queue"]
    assert hcl_text(dead_letter["arn"]) == "${local.dead_letter_queue_arn}"
    params = {hcl_text(p["resource_key"]): p for p in target["param_list"]}
    assert hcl_text(params["Body"]["form"]) == "ORIGINAL"
    assert hcl_text(params["url"]["value"]) == "${var.webhook_url}"
    variables = terraform_blocks("variable")
    assert {"webhook_url", "dead_letter_queue_arn", "event_bus_name"} <= set(variables)
    assert "default" not in variables["webhook_url"]
