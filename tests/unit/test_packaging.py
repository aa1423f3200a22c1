"""Install artefacts: systemd units verify and stay hardened, shell scripts pass shellcheck,
the Vagrantfile validates (all offline)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "packaging" / "systemd").glob("*.service"))
# Exposure systemd-analyze reports today; the reasons for what is left are in docs/INSTALL.md.
MAX_EXPOSURE = 4.0
# `systemd-analyze security --offline` (scoring a unit file not installed) arrived in systemd 250;
# on older systemd (Debian 11 has 247) only the settings below are checked (docs/INSTALL.md).
OFFLINE_SECURITY_SINCE = 250
# The sandboxing both units keep, whatever systemd scores them: the settings behind MAX_EXPOSURE.
HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=read-only", "PrivateTmp=yes",
             "PrivateDevices=yes", "ProtectHostname=yes", "ProtectClock=yes", "ProtectKernelLogs=yes",
             "ProtectProc=default", "RestrictNamespaces=yes", "RestrictRealtime=yes", "RestrictSUIDSGID=yes",
             "LockPersonality=yes", "SystemCallArchitectures=native")


def systemd_version() -> int:
    r = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True, check=True)
    m = re.match(r"systemd (\d+)", r.stdout)
    assert m, r.stdout
    return int(m.group(1))


def _unit_with_real_paths(unit: Path, tmp_path: Path) -> Path:
    """The unit with /opt/callerid/venv pointing at this checkout's venv, so that
    `verify` can check the executable exists."""
    venv = Path(sys.executable).parent.parent
    out = tmp_path / unit.name
    out.write_text(unit.read_text().replace("/opt/callerid/venv", str(venv)))
    return out


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_verifies(unit, tmp_path):
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian package systemd)")
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(_unit_with_real_paths(unit, tmp_path))],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "callerid" not in r.stderr, r.stderr  # warnings about our unit (others' units may warn)


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_keeps_its_sandboxing(unit):
    lines = {ln.strip() for ln in unit.read_text().splitlines()}
    assert [h for h in HARDENING if h not in lines] == []
    assert any(ln.startswith("CapabilityBoundingSet=") for ln in lines)
    assert any(ln.startswith("SystemCallFilter=@system-service") for ln in lines)
    assert any(ln.startswith("RestrictAddressFamilies=") for ln in lines)


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_exposure_stays_low(unit):
    """Scored where systemd can score a unit file offline; on older systemd the sandboxing
    settings (test_unit_keeps_its_sandboxing) are what is checked, and this says so."""
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian package systemd)")
    version = systemd_version()
    if version < OFFLINE_SECURITY_SINCE:
        r = subprocess.run(["systemd-analyze", "security", "--help"], capture_output=True, text=True)
        assert "--offline" not in r.stdout, f"systemd {version} has --offline after all: score the unit"
        print(f"systemd {version}: no `security --offline`; exposure not scored here (floor {OFFLINE_SECURITY_SINCE})")
        return
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout


def test_shell_scripts_pass_shellcheck():
    require(shutil.which("shellcheck") is not None, "shellcheck (Debian package shellcheck)")
    scripts = [str(p) for p in ROOT.glob("scripts/*.sh")] + [str(p) for p in ROOT.glob("vagrant/**/*.sh")] \
        + [str(ROOT / ".ci" / "run")]
    r = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_vagrantfile_validates(tmp_path):
    require(shutil.which("vagrant") is not None, "vagrant (Debian package vagrant)")
    env = {"VAGRANT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    # -p: validate without a provider plugin installed (libvirt/VirtualBox are not here)
    r = subprocess.run(["vagrant", "validate", "-p"], cwd=ROOT / "vagrant", env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
