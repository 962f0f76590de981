"""The house's layers (../shared/ARCHITECTURE.md, docs/architecture.md), checked: imports point
down only, no two sibling modules or packages import each other, only the gunicorn host
imports gunicorn, the core names no framework. The contracts are in .importlinter; this runs
import-linter's own checker on them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    checker = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(checker), "--config", str(REPO / ".importlinter"),
                             "--no-cache"], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_back_arrow_breaks_the_contract(tmp_path):
    """The checker sees a lower layer importing a higher one (here, in a copy of the tree)."""
    import shutil

    copy = tmp_path / "tree"
    for name in ("serving", "handlers"):
        shutil.copytree(REPO / name, copy / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", copy / ".importlinter")
    config = copy / "serving" / "config.py"
    config.write_text(config.read_text() + "\nfrom serving.http import app  # noqa\n")
    checker = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(checker), "--no-cache"], cwd=copy, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(copy)})
    assert result.returncode != 0
    assert "serving.config is not allowed to import serving.http" in result.stdout
