"""Run ``deploy/nginx/asr-ingest.conf`` with Debian's nginx, pointed at a local gunicorn.

The deploy file is used as written except for two lines: its ``listen`` port and its upstream
``server`` (compose's ``web:8000``), which become loopback ports. A main configuration around it
keeps the pid file, logs and temporary files in a directory of the test's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from asr_ingest.stack import ChildSpec
from asr_ingest.starters import http_probe

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "deploy" / "nginx" / "asr-ingest.conf"
UPSTREAM = re.compile(r"^(\s*server )web:8000;$", re.MULTILINE)
LISTEN = re.compile(r"^(\s*listen )8080;$", re.MULTILINE)

MAIN = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/site.conf;
}}
"""


def nginx_binary() -> str | None:
    """Path of ``nginx`` (on PATH or in /usr/sbin), None when it is not installed."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def render(directory: Path, *, listen_port: int, upstream_port: int) -> Path:
    """Write the main configuration and the site (loopback ports) into ``directory``; its path."""
    site, listens = LISTEN.subn(rf"\g<1>127.0.0.1:{listen_port};", SITE.read_text())
    site, upstreams = UPSTREAM.subn(rf"\g<1>127.0.0.1:{upstream_port};", site)
    assert (listens, upstreams) == (1, 1), "deploy/nginx/asr-ingest.conf changed shape"
    (directory / "site.conf").write_text(site)
    main = directory / "nginx.conf"
    main.write_text(MAIN.format(dir=directory))
    return main


def check(binary: str, config: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t -c config``: parse and check the configuration (exit code 0 when valid)."""
    argv = [binary, "-t", "-q", "-p", str(config.parent), "-c", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def proxy_spec(binary: str, config: Path, listen_port: int) -> ChildSpec:
    """nginx in the foreground with ``config``; ready when ``/livez`` answers through it."""
    url = f"http://127.0.0.1:{listen_port}"
    argv = [binary, "-p", str(config.parent), "-c", str(config)]
    return ChildSpec("proxy", argv, probe=http_probe(f"{url}/livez", status=200), url=url)
