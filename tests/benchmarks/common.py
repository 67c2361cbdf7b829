"""Helpers shared by the benchmarks: the Procfile's commands, process CPU, figures as JSON.

A benchmark follows the ``Procfile`` (:func:`procfile_argv`): the ``web`` line's gunicorn
settings (worker class, config file, workers, timeout) and the ``worker`` line's Celery pool
and concurrency, so a change there is measured without touching the benchmark. Each benchmark
writes its figures with :func:`write_figures` (``--json-out``); ``summary.py`` collects them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PROCFILE = REPO_ROOT / "Procfile"
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def procfile_argv(process: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The argv of ``process`` (``web``, ``worker``) in the Procfile, variables expanded.

    ``${NAME:-default}`` takes ``env``'s value (default: ``os.environ``), else the default.
    Raises :class:`KeyError` when the Procfile has no such line.
    """
    values = os.environ if env is None else env
    for line in PROCFILE.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == process:
            expanded = _VARIABLE.sub(
                lambda m: values.get(m[1] or m[3], m[2] or ""), command.strip()
            )
            return shlex.split(expanded)
    raise KeyError(f"Procfile has no {process!r} line")


def _option(argv: Sequence[str], names: Iterable[str]) -> str | None:
    """The value of the first of ``names`` in ``argv`` (``--x v`` or ``--x=v``), else None."""
    names = tuple(names)
    for n, arg in enumerate(argv):
        if arg in names and n + 1 < len(argv):
            return argv[n + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _without(argv: Sequence[str], names: Iterable[str]) -> list[str]:
    """``argv`` without the options ``names`` and their values."""
    names, out, skip = tuple(names), [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not any(n.startswith("--") and arg.startswith(n + "=") for n in names):
            out.append(arg)
    return out


_CONFIG = ("-c", "--config")
_BIND = ("-b", "--bind")


@dataclass(frozen=True)
class WebCommand:
    """The Procfile's ``web`` gunicorn command, ready to run any app on a loopback port.

    ``options`` are its flags minus ``--bind`` and the app reference (a config file it names
    that does not exist in this checkout is dropped: the flags alone are then used).
    """

    options: tuple[str, ...]
    config: str | None
    dropped_config: str | None

    @classmethod
    def from_procfile(cls, workers: int | None = None) -> WebCommand:
        """Parse the ``web`` line; ``workers`` overrides ``--workers`` when given."""
        argv = procfile_argv("web")
        if Path(argv[0]).name != "gunicorn":
            raise RuntimeError(f"the Procfile's web is not gunicorn: {argv[0]}")
        flags = [a for a in argv[1:] if a != "webhook.wsgi:app"]
        config = _option(flags, _CONFIG)
        dropped = None
        if config is not None:
            path = config.removeprefix("file:")
            if not config.startswith("python:") and not (REPO_ROOT / path).is_file():
                dropped, config = config, None
                flags = _without(flags, _CONFIG)
        flags = _without(flags, _BIND)
        if workers is not None:
            flags = [*_without(flags, ("-w", "--workers")), "--workers", str(workers)]
        return cls(tuple(flags), config, dropped)

    def argv(self, gunicorn: str, app_ref: str, port: int) -> list[str]:
        """gunicorn serving ``app_ref`` on ``127.0.0.1:port`` with the Procfile's settings."""
        return [gunicorn, app_ref, *self.options, "--bind", f"127.0.0.1:{port}"]

    def describe(self) -> str:
        """One line for the report: the flags used and any config file dropped."""
        text = " ".join(self.options)
        if self.dropped_config:
            text += f"  (Procfile's {self.dropped_config} not in this checkout: flags only)"
        return text


@dataclass(frozen=True)
class WorkerCommand:
    """The Procfile's ``worker`` Celery pool and concurrency (Celery's defaults when unset)."""

    pool: str
    concurrency: int

    @classmethod
    def from_procfile(cls) -> WorkerCommand:
        """Parse the ``worker`` line: ``--pool``/``-P`` (prefork), ``--concurrency``/``-c``
        (the CPU count, as Celery's default)."""
        argv = procfile_argv("worker")
        pool = _option(argv, ("-P", "--pool")) or "prefork"
        concurrency = _option(argv, ("-c", "--concurrency"))
        return cls(pool, int(concurrency) if concurrency else os.cpu_count() or 1)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux ``/proc``), parents first."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        queue.extend(int(child) for child in children)
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (gone processes count 0)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants alive now."""
    return cpu_seconds(process_tree(pid))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linear interpolation; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median_of(values: Iterable[float]) -> float:
    """The median of ``values`` (nan when empty)."""
    items = list(values)
    return statistics.median(items) if items else float("nan")


@dataclass(frozen=True)
class Figure:
    """One figure of the issue's table: value, target and whether it holds.

    ``op`` is ``>=``, ``<=`` or ``<``; ``runs`` are the values the median was taken of.
    """

    name: str
    value: float
    unit: str
    op: str
    target: float
    note: str = ""
    runs: tuple[float, ...] = ()

    @property
    def holds(self) -> bool:
        """True when ``value op target``."""
        compare: dict[str, Callable[[float, float], bool]] = {
            ">=": lambda a, b: a >= b,
            "<=": lambda a, b: a <= b,
            "<": lambda a, b: a < b,
        }
        return compare[self.op](self.value, self.target)

    def as_json(self) -> dict[str, Any]:
        """The figure as a JSON object (``holds`` included)."""
        return {**asdict(self), "runs": list(self.runs), "holds": self.holds}


def write_figures(
    path: str | None, bench: str, figures: Sequence[Figure], details: dict[str, Any]
) -> None:
    """Print the figures and, when ``path`` is given, write them with ``details`` as JSON."""
    for figure in figures:
        mark = "holds" if figure.holds else "MISSES"
        print(
            f"FIGURE {figure.name}: {figure.value:.3g} {figure.unit} "
            f"(target {figure.op} {figure.target:g}) {mark}  {figure.note}"
        )
    if path:
        document = {
            "bench": bench,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "figures": [f.as_json() for f in figures],
            "details": details,
        }
        Path(path).write_text(json.dumps(document, indent=2, default=str) + "\n")
