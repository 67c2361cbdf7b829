"""Collect the benchmarks' figures into one table and ``bench.json`` (``make bench``'s last step).

``python tests/benchmarks/summary.py DIR [--out bench.json]`` reads every ``*.json`` that the
benchmarks wrote into DIR (``--json-out``), prints one table (figure, value, target, holds)
in the issue's order, and writes the same rows, with each benchmark's details and the load
average seen, to ``--out``. A benchmark whose file is missing (it failed) is listed as not
measured, and the exit status is then 1; figures that miss their target do not change it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ORDER = ("webhook", "archive", "submit", "latency", "run")
"""Benchmarks in the order of the issue's table."""


def load(directory: Path) -> dict[str, dict[str, Any]]:
    """The documents in ``directory`` by benchmark name."""
    documents = {}
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text())
        documents[document["bench"]] = document
    return documents


def rows(documents: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per figure, in :data:`ORDER`; a missing benchmark gives one row without value."""
    out = []
    for bench in ORDER:
        document = documents.get(bench)
        if document is None:
            out.append(
                {"bench": bench, "name": f"{bench} (not measured: it failed)", "value": None}
            )
            continue
        out.extend({"bench": bench, **figure} for figure in document["figures"])
    return out


def render(table: list[dict[str, Any]]) -> str:
    """The table as aligned text."""
    lines = [f"{'figure':50} {'value':>10} {'target':>10}  holds  note", "-" * 110]
    for row in table:
        if row["value"] is None:
            lines.append(f"{row['name']:50} {'-':>10} {'-':>10}  -")
            continue
        value = f"{row['value']:.3g} {row['unit']}"
        target = f"{row['op']} {row['target']:g}"
        holds = "yes" if row["holds"] else "NO"
        lines.append(f"{row['name']:50} {value:>10} {target:>10}  {holds:5}  {row['note']}")
    return "\n".join(lines)


def main() -> None:
    """Print the table, write ``--out``; exit 1 when a benchmark produced no figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    args = parser.parse_args()
    documents = load(args.directory)
    table = rows(documents)
    print()
    print(render(table))
    loads = sorted({round(d["load_average"][0], 1) for d in documents.values()})
    print(f"\n{os.cpu_count()} CPUs; 1-min load average seen by the benchmarks: {loads}")
    args.out.write_text(
        json.dumps({"figures": table, "benchmarks": documents}, indent=2, default=str) + "\n"
    )
    print(f"written: {args.out}")
    if any(row["value"] is None for row in table):
        sys.exit(1)


if __name__ == "__main__":
    main()
