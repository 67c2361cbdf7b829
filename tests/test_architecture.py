"""The import contracts of pyproject.toml hold, and they catch a violation when one appears."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["core", "webhook", "worker", "sandbox", "asr_ingest"]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` on the packages under ``tree`` with the project's contracts."""
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_tree(target: Path) -> Path:
    """A copy of the packages and pyproject.toml under ``target``."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def test_contracts_are_kept() -> None:
    """Every import contract holds for the repository as it is."""
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_webhook_importing_worker_breaks_a_contract(tmp_path: Path) -> None:
    """A webhook module that imports the worker fails the layers contract."""
    tree = copy_tree(tmp_path)
    views = tree / "webhook" / "views.py"
    views.write_text(views.read_text() + "\nimport worker.app  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "webhook.views -> worker.app" in result.stdout


def test_core_importing_webhook_breaks_a_contract(tmp_path: Path) -> None:
    """The core importing a package above it fails the layers contract."""
    tree = copy_tree(tmp_path)
    store = tree / "core" / "store.py"
    store.write_text(store.read_text() + "\nimport webhook.errors  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "core.store -> webhook.errors" in result.stdout
