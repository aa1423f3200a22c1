"""The Debian package: built with Debian's tooling (scripts/build_deb.sh), installed with
apt-get into a throwaway Debian 12 chroot (never this host), where its commands run and
its files are where docs/INSTALL.md says.

The chroot is an overlay over a cached debootstrap minbase (built once, ~1 min) and is
thrown away after the test; downloaded .debs are cached beside it. Needs root and the
Debian mirror apt already uses."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import require

ROOT = Path(__file__).resolve().parents[2]
# Building the package, a first debootstrap and apt-get downloading BCC and LLVM take minutes.
pytestmark = pytest.mark.timeout(1800)
CACHE = Path(os.environ.get("CALLERID_CHROOT_CACHE", "/var/cache/callerid-chroot"))
SUITE = "bookworm"
BASE = CACHE / f"{SUITE}-minbase"
ARCHIVES = CACHE / f"{SUITE}-apt-archives"

# Where the package puts things; docs/INSTALL.md must say the same.
INSTALLED = {
    "command": "/usr/bin/callerid",
    "module": "/lib/x86_64-linux-gnu/security/pam_callerid.so",
    "pam line": "/usr/share/callerid/pam/sshd-account-callerid",
    "config": "/etc/callerid/callerid.toml",
    "profile": "/etc/profile.d/callerid.sh",
    "tracer unit": "/lib/systemd/system/callerid-tracer.service",
    "adopter unit": "/lib/systemd/system/callerid-adopter.service",
    "docs": "/usr/share/doc/callerid/INSTALL.md",
}


def _mirror() -> str:
    try:
        for line in Path("/etc/apt/sources.list.d/debian.sources").read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    except OSError:
        pass
    return "http://deb.debian.org/debian"


def _base() -> Path:
    if not (BASE / "usr" / "bin" / "apt-get").exists():
        partial = Path(f"{BASE}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(partial), _mirror()],
                       check=True, capture_output=True, timeout=900)
        partial.rename(BASE)
    return BASE


@pytest.fixture(scope="module")
def deb() -> Path:
    require(os.geteuid() == 0, "root (apt-get for the build dependencies, chroot, mounts)")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "build_deb.sh")], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    (path,) = ROOT.glob("build/callerid_*.deb")
    return path


@pytest.fixture(scope="module")
def chroot(deb):
    """A Debian 12 root with the package installed by apt-get; gone after the module."""
    require(shutil.which("debootstrap") is not None, "debootstrap (Debian package debootstrap)")
    base = _base()
    ARCHIVES.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="callerid-deb-"))
    root, mounts = tmp / "root", []

    def mount(*argv, target):
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *argv, str(target)], check=True)
        mounts.append(target)

    def run(*argv, **kw):
        return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, timeout=900,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                                   "DEBIAN_FRONTEND": "noninteractive"}, **kw)
    try:
        for d in ("upper", "work"):
            (tmp / d).mkdir()
        mount("-t", "overlay", "overlay", "-o",
              f"lowerdir={base},upperdir={tmp / 'upper'},workdir={tmp / 'work'}", target=root)
        mount("-t", "proc", "proc", target=root / "proc")
        mount("--bind", "/dev", target=root / "dev")
        mount("--bind", str(ARCHIVES), target=root / "var/cache/apt/archives")
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        # No service may start inside the chroot (munge, ...).
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        shutil.copy(deb, root / "tmp" / deb.name)
        r = run("apt-get", "update", "-q")
        assert r.returncode == 0, r.stdout + r.stderr
        r = run("apt-get", "install", "-y", "-q", "--no-install-recommends", f"/tmp/{deb.name}")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        yield root, run
    finally:
        for target in reversed(mounts):
            subprocess.run(["umount", "-l", str(target)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def test_commands_run_with_debians_python_and_bcc(chroot):
    root, run = chroot
    for argv in (["callerid", "--help"], ["callerid", "doctor", "--help"]):
        r = run(*argv)
        assert r.returncode == 0 and "usage: callerid" in r.stdout, r.stdout + r.stderr
    # the system python3 imports the tracer, so it sees python3-bpfcc
    r = run("python3", "-c", "import bcc, callerid.tracer.probes as p; print(p.__file__)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("/usr/lib/python3/dist-packages/callerid/")


def test_files_are_where_install_md_says(chroot):
    root, run = chroot
    install_md = (ROOT / "docs" / "INSTALL.md").read_text()
    for what, path in INSTALLED.items():
        assert (root / path.lstrip("/")).is_file(), f"{what}: {path} not installed"
        assert path in install_md, f"docs/INSTALL.md does not name {path} ({what})"
    assert (root / INSTALLED["module"].lstrip("/")).stat().st_mode & 0o022 == 0
    for unit in ("tracer unit", "adopter unit"):
        text = (root / INSTALLED[unit].lstrip("/")).read_text()
        assert "ExecStart=/usr/bin/callerid --config /etc/callerid/callerid.toml" in text
        assert "/opt/callerid" not in text
    pam = (root / INSTALLED["pam line"].lstrip("/")).read_text()
    assert "-account   required     pam_callerid.so" in pam   # PAM finds it in its own module directory


def test_default_config_is_a_conffile_and_loads(chroot):
    root, run = chroot
    r = run("dpkg-query", "-W", "-f=${Conffiles}", "callerid")
    assert INSTALLED["config"] in r.stdout and INSTALLED["profile"] in r.stdout
    r = run("callerid", "config")
    assert r.returncode == 0 and '"adopt_exe"' in r.stdout, r.stderr


def test_units_installed_not_enabled(chroot):
    root, run = chroot
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert not any(wants.glob("callerid-*")) if wants.exists() else True
