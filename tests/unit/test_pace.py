"""The slow-machine factor (tests/infra/pace.py): time bounds stretch, pytest-timeout's too."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_pace_probe(slowdown: str | None) -> str:
    """pytest run on a probe file inside tests/ (so tests/conftest.py applies); its printed bounds."""
    probe = REPO / "tests" / "unit" / f"_pace_probe_{os.getpid()}_test.py"
    probe.write_text(textwrap.dedent("""
        import pytest
        from tests.infra import pace

        @pytest.mark.timeout(7)
        def test_marked(request):
            print("MARKED", request.node.get_closest_marker("timeout").args[0])

        def test_default(request):
            m = request.node.get_closest_marker("timeout")
            print("DEFAULT", m.args[0] if m else None, "SSH", pace.scaled_int(10))
    """))
    env = {k: v for k, v in os.environ.items() if k != "CALLERID_TEST_SLOWDOWN"}
    if slowdown is not None:
        env["CALLERID_TEST_SLOWDOWN"] = slowdown
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(probe)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_a_host_keeps_every_bound():
    out = run_pace_probe(None)
    assert "MARKED 7" in out and "DEFAULT None SSH 10" in out


def test_a_slow_machine_stretches_every_bound_by_the_one_factor():
    out = run_pace_probe("10")
    assert "MARKED 70.0" in out
    assert "DEFAULT 3000.0 SSH 100" in out  # pyproject's timeout = 300
