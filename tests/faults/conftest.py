"""Fixtures for fault tests: the Procfile's ``web`` process itself, started as a platform would.

The command line is read from the ``Procfile`` and run by ``/bin/sh -c`` (as foreman, honcho and
Heroku do) with ``PORT`` set and ``WEB_CONCURRENCY`` unset, so ``${WEB_CONCURRENCY:-4}`` takes
the Procfile's default. Only the variables the webhook requires are set: everything else is
at its default.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from asr_ingest.stack import Child, ChildSpec, Stack
from asr_ingest.starters import free_port, http_probe
from tests.faults.proxy import nginx_binary, proxy_spec, render
from tests.support.eventbridge_signer import CertificateHost, Route, Signer, make_identity
from tests.webhook.conftest import CERT_PATH, TARGET_URL, cert_url_regex

ROOT = Path(__file__).resolve().parents[2]

StartWeb = Callable[..., Child]
StartProxy = Callable[[Child], Child]


def procfile_command(name: str, procfile: Path = ROOT / "Procfile") -> str:
    """The command line of process ``name`` in ``procfile``."""
    for line in procfile.read_text().splitlines():
        key, _, command = line.partition(": ")
        if key == name:
            return command
    raise LookupError(f"no {name!r} process in {procfile}")


@pytest.fixture(scope="module")
def cert_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertificateHost]:
    """An HTTPS host serving a fresh EventBridge signing certificate."""
    host = CertificateHost(tmp_path_factory.mktemp("tls")).start()
    yield host
    host.stop()


@pytest.fixture(scope="module")
def signer(cert_host: CertificateHost) -> Signer:
    """Signs deliveries like EventBridge, with the certificate ``cert_host`` serves."""
    identity = make_identity()
    cert_host.routes[CERT_PATH] = Route(identity.certificate_pem)
    return Signer(identity, cert_host.url(CERT_PATH), TARGET_URL)


@pytest.fixture
def start_web(cert_host: CertificateHost, tmp_path: Path) -> Iterator[StartWeb]:
    """Starts the Procfile's ``web`` command (or ``command``) for a Redis URL; stops it after."""
    stack = Stack(sink=lambda _line: None, handle_signals=False, grace_s=5)

    def start(redis_url: str, command: str | None = None) -> Child:
        port = free_port()
        (tmp_path / "prometheus").mkdir(exist_ok=True)
        env = {
            "PORT": str(port),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "REDIS_URL": redis_url,
            "WEBHOOK_PUBLIC_URL": TARGET_URL,
            "EVENTBRIDGE_CERT_URL_REGEX": cert_url_regex(cert_host),
            "SSL_CERT_FILE": str(cert_host.ca_file),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
            "LOG_FORMAT": "json",
        }
        script = f"unset WEB_CONCURRENCY; exec {command or procfile_command('web')}"
        argv = ["/bin/sh", "-c", script]
        url = f"http://127.0.0.1:{port}"
        probe = http_probe(f"{url}/readyz", status=200)
        return stack.start(ChildSpec("web", argv, env=env, probe=probe, cwd=ROOT, url=url))

    yield start
    stack.stop_all()


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[StartProxy]:
    """Starts nginx with ``deploy/nginx/asr-ingest.conf`` in front of a started web process.

    Skips when nginx is not installed (``.ci/run`` installs Debian's).
    """
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    stack = Stack(sink=lambda _line: None, handle_signals=False, grace_s=5)

    def start(web: Child) -> Child:
        directory = tmp_path / "nginx"
        directory.mkdir()
        port = free_port()
        upstream = int(web.spec.url.rsplit(":", 1)[1])
        config = render(directory, listen_port=port, upstream_port=upstream)
        return stack.start(proxy_spec(binary, config, port))

    yield start
    stack.stop_all()
