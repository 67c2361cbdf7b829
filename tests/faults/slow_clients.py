"""Slow HTTP clients for fault tests: send the headers at once, then the body a byte at a time.

Each client announces ``Content-Length: 100000`` and then drips one body byte every
``interval_s`` seconds, the "slow POST" of a client on a bad link or of an attacker. One thread
drives every socket; it stops by itself after ``duration_s`` (or :meth:`SlowClients.stop`) and
closes them all. A client whose connection the server answers or closes is recorded as cut off,
with the time since its headers were sent and the status line it got (if any).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

ANNOUNCED_BYTES = 100_000


@dataclass
class SlowClient:
    """One connection; ``cut_after_s`` and ``answer`` are set when the server ends it."""

    sock: socket.socket
    started: float
    cut_after_s: float | None = None
    answer: bytes = b""


@dataclass
class SlowClients:
    """``count`` slow POSTs to ``127.0.0.1:port``, dripping for at most ``duration_s`` seconds."""

    port: int
    count: int = 200
    interval_s: float = 2.0
    duration_s: float = 60.0
    path: str = "/callbacks/eventbridge"
    clients: list[SlowClient] = field(default_factory=list)
    _stopped: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> SlowClients:
        """Connect every client and send its headers, then start dripping in a thread."""
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {ANNOUNCED_BYTES}\r\n\r\n"
        ).encode()
        for _ in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.sendall(head)
            sock.setblocking(False)
            self.clients.append(SlowClient(sock, time.monotonic()))
        self._thread = threading.Thread(target=self._drip, name="slow-clients", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop dripping and close every socket (waits for the thread)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def open_count(self) -> int:
        """Clients the server has neither answered nor closed yet."""
        return sum(1 for client in self.clients if client.cut_after_s is None)

    def cut_off(self) -> list[SlowClient]:
        """Clients the server has answered or closed."""
        return [client for client in self.clients if client.cut_after_s is not None]

    def wait_all_cut(self, timeout_s: float) -> bool:
        """True once every client is cut off, False when ``timeout_s`` passes first."""
        deadline = time.monotonic() + timeout_s
        while self.open_count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.open_count == 0

    def _drip(self) -> None:
        selector = selectors.DefaultSelector()
        for client in self.clients:
            selector.register(client.sock, selectors.EVENT_READ, client)
        ends = time.monotonic() + self.duration_s
        next_drip = time.monotonic() + self.interval_s
        try:
            while not self._stopped.is_set() and time.monotonic() < ends:
                timeout = max(0.0, min(next_drip, ends) - time.monotonic())
                for key, _ in selector.select(timeout=min(timeout, 0.2)):
                    self._on_readable(selector, key.data)
                if time.monotonic() >= next_drip:
                    self._send_byte(selector)
                    next_drip += self.interval_s
        finally:
            selector.close()
            for client in self.clients:
                client.sock.close()

    def _on_readable(self, selector: selectors.BaseSelector, client: SlowClient) -> None:
        try:
            data = client.sock.recv(4096)
        except OSError:
            data = b""
        client.answer += data
        if not data or b"\r\n\r\n" in client.answer:
            self._cut(selector, client)

    def _send_byte(self, selector: selectors.BaseSelector) -> None:
        for client in self.clients:
            if client.cut_after_s is None:
                try:
                    client.sock.send(b"{")
                except BlockingIOError:
                    pass  # the server is not reading: that is the point
                except OSError:
                    self._cut(selector, client)

    @staticmethod
    def _cut(selector: selectors.BaseSelector, client: SlowClient) -> None:
        client.cut_after_s = time.monotonic() - client.started
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(client.sock)


def status_of(answer: bytes) -> int | None:
    """The status code of an HTTP answer's status line, None when there was no answer."""
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
