"""The Python floor and the newest Python, without a VM: the unit suite under Debian 11's
Python 3.9 (RHEL/Rocky 9's version) with its BCC 0.18, and under Debian 13's Python 3.13
with BCC 0.31, each in a chroot (scripts/python_check.sh; ~30 s each once the chroot is
cached, 1-2 min more the first time)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import require

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1200)   # the first run builds the chroot
@pytest.mark.parametrize("suite, python", [("bullseye", "3.9"), ("trixie", "3.13")])
def test_unit_suite_passes_under_that_python(suite, python):
    require(os.geteuid() == 0, "root (debootstrap, chroot, mounts)")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "python_check.sh"), suite], capture_output=True, text=True,
                       timeout=1200)
    out = r.stdout + r.stderr
    assert f"Python {python}." in out, out[-3000:]
    assert r.returncode == 0, out[-5000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed[1]) > 500, out[-3000:]
    assert " failed" not in out and " error" not in out, out[-5000:]
