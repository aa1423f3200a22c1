"""Generated docs match the code, and ruff, with the project's configuration, finds nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from callerid import config

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_is_current():
    assert (ROOT / "docs" / "CONFIG.md").read_text() == config.reference() + "\n", \
        "docs/CONFIG.md is stale: run .venv/bin/python3 scripts/gen_docs.py"


def test_packaged_default_config_is_current():
    assert (ROOT / "packaging" / "callerid.toml").read_text() == config.sample(), \
        "packaging/callerid.toml is stale: run .venv/bin/python3 scripts/gen_docs.py"


def _ruff() -> str:
    """The venv's ruff, the version the test extra pins (a ruff on PATH may be another one)."""
    return str(Path(sys.executable).parent / "ruff")


def test_ruff_is_the_pinned_version():
    pin = re.search(r'"ruff==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml: the test extra must pin ruff (ruff==X.Y.Z)"
    r = subprocess.run([_ruff(), "--version"], capture_output=True, text=True)
    assert r.stdout.split() == ["ruff", pin.group(1)], r.stdout + r.stderr


def test_ruff_rule_set_is_the_chosen_one():
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert set(lint["select"]) >= {"E", "F", "W", "I", "B", "UP", "SIM"}


def test_ruff_clean():
    """`ruff check` with the configuration in pyproject.toml ([tool.ruff]) and nothing else."""
    r = subprocess.run([_ruff(), "check", "--no-cache", str(ROOT)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
