"""Generated docs match the code, and the tree has no undefined names or unused imports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from callerid import config

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_is_current():
    assert (ROOT / "docs" / "CONFIG.md").read_text() == config.reference() + "\n", \
        "docs/CONFIG.md is stale: run .venv/bin/python3 scripts/gen_docs.py"


def test_pyflakes_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    r = subprocess.run([ruff, "check", "--no-cache", "--select", "F,E9", str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
