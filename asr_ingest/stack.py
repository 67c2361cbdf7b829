"""Supervise the local stack's child processes: start, prefix output, wait, stop, kill, restart.

``asr-ingest run`` and the end-to-end tests start the pipeline's parts (Redis, moto, the
sandbox, the webhook under gunicorn, a Celery worker) as children of one :class:`Stack`;
:mod:`asr_ingest.starters` builds their :class:`ChildSpec`.

- Each child runs in its own session and process group (``start_new_session``): a signal sent
  to the group reaches everything it forked (gunicorn and Celery pool workers), and a Ctrl-C
  typed at the terminal reaches only the parent, which then stops the children in order.
- Each output line (stdout and stderr merged) goes to the sink as ``"<name> | <line>"``, with
  the query string of every URL removed (a signed URL is a credential: contract, "Archive
  layout"). With ``log_dir``, the raw lines also go to ``<log_dir>/<name>.log``, so tests can
  check what the children themselves wrote.
- :meth:`Stack.start` returns once the child's readiness probe passes.
- Stopping sends SIGTERM to the child's main process (gunicorn and Celery shut their own
  workers down gracefully), waits ``grace_s``, then SIGKILLs the whole group, stragglers
  included. Children stop in reverse start order, on :meth:`Stack.stop_all`, on leaving the
  ``with`` block, at interpreter exit, and on SIGTERM or SIGINT of the parent; a second signal
  during shutdown skips what is left of the grace periods.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from core.logs import redact_urls

Probe = Callable[[], bool]
"""A readiness check: True when ready. Exceptions count as "not yet"."""

Sink = Callable[[str], None]
"""Where prefixed output lines go (one call per line, without a newline)."""

POLL_S = 0.05


class StackError(RuntimeError):
    """A child exited before it was ready, or its probe did not pass in time.

    The message names the child and ends with its last output lines.
    """


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child.

    ``argv`` is run without a shell; ``env`` is laid over the parent's environment;
    ``probe`` decides readiness (None: ready once started); ``url`` is the address the child
    serves, when it serves one (informational, for the caller); ``pass_fds`` are file
    descriptors the child inherits (a listening socket bound by the parent, so no other
    process can take its port between choosing and binding it).
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    probe: Probe | None = None
    ready_timeout_s: float = 30.0
    cwd: Path | None = None
    url: str = ""
    pass_fds: tuple[int, ...] = ()


class Child:
    """A started child: its spec, its :class:`subprocess.Popen`, and its last 200 lines."""

    def __init__(self, spec: ChildSpec, process: subprocess.Popen[bytes]) -> None:
        self.spec = spec
        self.process = process
        self.tail: deque[str] = deque(maxlen=200)
        self.pump: threading.Thread | None = None

    @property
    def pid(self) -> int:
        """Process id of the child, which is also its process group id."""
        return self.process.pid

    @property
    def alive(self) -> bool:
        """True while the child's main process runs."""
        return self.process.poll() is None

    def wait_for(self, text: str, timeout_s: float = 10.0) -> str:
        """The first of the last 200 output lines containing ``text``, waiting up to ``timeout_s``.

        Raises :class:`StackError` when the child exits or the time runs out first.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = next((line for line in list(self.tail) if text in line), None)
            if found is not None:
                return found
            if not self.alive:
                break
            time.sleep(POLL_S)
        raise StackError(f"{self.spec.name}: no line with {text!r}:\n{self.describe()}")

    def describe(self, lines: int = 20) -> str:
        """The last ``lines`` output lines, for error messages."""
        return "\n".join(list(self.tail)[-lines:])


def print_line(line: str) -> None:
    """The default sink: print to the current ``sys.stdout`` and flush."""
    print(line, flush=True)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, signum)


class Stack:
    """Child processes started in order and stopped in reverse order.

    ``sink`` receives prefixed, redacted output lines as plain text (default :func:`print_line`;
    with rich, pass ``lambda line: console.print(line, markup=False, highlight=False)``, since
    log lines hold brackets rich would read as markup); ``log_dir`` gets a raw ``<name>.log``
    per child;
    ``grace_s`` is how long a child may take to exit after SIGTERM before SIGKILL (seconds);
    ``handle_signals`` installs SIGTERM/SIGINT handlers while children run (main thread only).
    """

    def __init__(
        self,
        *,
        sink: Sink = print_line,
        log_dir: Path | None = None,
        grace_s: float = 10.0,
        name_width: int = 8,
        redact: bool = True,
        handle_signals: bool = True,
    ) -> None:
        self.children: dict[str, Child] = {}
        self.grace_s = grace_s
        self._sink = sink
        self._log_dir = log_dir
        self._width = name_width
        self._redact = redact
        self._handle_signals = handle_signals
        self._lock = threading.Lock()
        self._armed = False
        self._stopping = False
        self._hurry = False
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()

    def __getitem__(self, name: str) -> Child:
        return self.children[name]

    def start(self, spec: ChildSpec) -> Child:
        """Start ``spec`` and wait until it is ready; the running :class:`Child`.

        Raises :class:`StackError` (after stopping the child) when it exits first or its
        probe does not pass within ``spec.ready_timeout_s``; :class:`ValueError` when a child
        of that name is already running; :class:`OSError` when ``argv`` cannot be executed.
        """
        return self.start_many([spec])[0]

    def start_many(self, specs: Sequence[ChildSpec]) -> list[Child]:
        """Start independent children together, then wait until each is ready (as :meth:`start`).

        Faster than one by one when their start-up times overlap (e.g. Redis, moto, sandbox).
        """
        children = self.launch_many(specs)
        self.wait_ready(children)
        return children

    def launch_many(self, specs: Sequence[ChildSpec]) -> list[Child]:
        """Start children without waiting for them (then :meth:`wait_ready`): the caller may
        work meanwhile. Raises as :meth:`start` does, except :class:`StackError`."""
        return [self._launch(spec) for spec in specs]

    def wait_ready(self, children: Sequence[Child]) -> None:
        """Wait until each launched child is ready; :class:`StackError` (after stopping that
        child) when one exits first or its probe does not pass within its ready timeout."""
        for child in children:
            try:
                self._wait_ready(child)
            except StackError:
                self._terminate(child)
                raise

    def stop(self, name: str) -> int | None:
        """Stop one child (SIGTERM, then SIGKILL after ``grace_s``); its exit status."""
        return self._terminate(self.children[name])

    def kill(self, name: str, signum: int = signal.SIGKILL) -> int | None:
        """Send ``signum`` to the child's whole process group and reap it; its exit status."""
        child = self.children[name]
        _signal_group(child.pid, signum)
        if signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            return self._reap(child, timeout_s=self.grace_s)
        return None

    def wait(self, name: str, timeout_s: float | None = None) -> int | None:
        """Wait up to ``timeout_s`` for a child to exit by itself; its status, None if running."""
        return self._reap(self.children[name], timeout_s)

    def restart(self, name: str) -> Child:
        """Stop the child if it still runs, then start it again from its spec."""
        child = self.children[name]
        self._terminate(child)
        return self.start(child.spec)

    def stop_all(self) -> None:
        """Stop every child, last started first; safe to call more than once."""
        if self._stopping:
            return
        self._stopping = True
        try:
            for child in reversed(list(self.children.values())):
                self._terminate(child)
        finally:
            self._disarm()
            self._stopping = False
            self._hurry = False

    # -- internals ---------------------------------------------------------------------------

    def _launch(self, spec: ChildSpec) -> Child:
        current = self.children.get(spec.name)
        if current is not None and current.alive:
            raise ValueError(f"child {spec.name!r} is already running")
        environ = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}
        process = subprocess.Popen(  # noqa: S603  # argv from our own specs, no shell
            list(spec.argv),
            env=environ,
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=spec.pass_fds,
        )
        child = Child(spec, process)
        self.children[spec.name] = child
        self._arm()
        child.pump = threading.Thread(
            target=self._pump, args=(child,), name=f"stack-{spec.name}", daemon=True
        )
        child.pump.start()
        return child

    def _pump(self, child: Child) -> None:
        stream = child.process.stdout
        assert stream is not None
        log = self._open_log(child.spec.name)
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                child.tail.append(line)
                if log is not None:
                    log.write(line + "\n")
                    log.flush()
                self._emit(child.spec.name, line)
        finally:
            stream.close()
            if log is not None:
                log.close()

    def _open_log(self, name: str) -> IO[str] | None:
        if self._log_dir is None:
            return None
        self._log_dir.mkdir(parents=True, exist_ok=True)
        return (self._log_dir / f"{name}.log").open("a", encoding="utf-8")

    def _emit(self, name: str, line: str) -> None:
        text = redact_urls(line) if self._redact else line
        # A closed or broken sink must not stop the pump: the child would block on a full pipe.
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._sink(f"{name.ljust(self._width)} | {text}")

    def _wait_ready(self, child: Child) -> None:
        spec = child.spec
        deadline = time.monotonic() + spec.ready_timeout_s
        while True:
            code = child.process.poll()
            if code is not None:
                self._join(child)
                raise StackError(
                    f"{spec.name} exited with {code} before ready:\n{child.describe()}"
                )
            if spec.probe is None or _passes(spec.probe):
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"{spec.name} not ready after {spec.ready_timeout_s} s:\n{child.describe()}"
                )
            time.sleep(POLL_S)

    def _terminate(self, child: Child) -> int | None:
        if child.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
            self._wait_exit(child, self.grace_s)
        _signal_group(child.pid, signal.SIGKILL)  # the leader if it ignored SIGTERM; stragglers
        return self._reap(child, timeout_s=self.grace_s)

    def _wait_exit(self, child: Child, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while child.alive and time.monotonic() < deadline and not self._hurry:
            time.sleep(POLL_S)

    def _reap(self, child: Child, timeout_s: float | None) -> int | None:
        try:
            code = child.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None
        self._join(child)
        return code

    @staticmethod
    def _join(child: Child) -> None:
        if child.pump is not None:
            child.pump.join(timeout=5)

    def _arm(self) -> None:
        if self._armed:
            return
        self._armed = True
        atexit.register(self.stop_all)
        if self._handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._saved[signum] = signal.signal(signum, self._on_signal)

    def _disarm(self) -> None:
        if not self._armed:
            return
        self._armed = False
        atexit.unregister(self.stop_all)
        for signum, previous in self._saved.items():
            signal.signal(signum, previous)
        self._saved.clear()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stopping:
            self._hurry = True  # second signal: skip the rest of the grace periods
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)


def _passes(probe: Probe) -> bool:
    try:
        return bool(probe())
    except Exception:  # a probe failing to connect means "not ready yet"
        return False
