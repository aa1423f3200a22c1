"""PyPI wheels for the guest's Python, fetched on the host: pip inside a guest has no index access."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

# manylinux tags every guest's glibc satisfies (bullseye has 2.31)
PLATFORMS = ("manylinux_2_31_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_12_x86_64", "manylinux2010_x86_64",
             "manylinux_2_5_x86_64", "manylinux1_x86_64")


def download(python: str, requirements: list[str], dest: Path) -> None:
    """Wheels (with dependencies) for CPython `python` into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
            "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
            "-d", str(dest)]
    for p in PLATFORMS:
        argv += ["--platform", p]
    subprocess.run(argv + requirements, check=True)


MISSING = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+[^;\s]*)")


def complete(check, python: str, requirements: list[str], dest: Path, rounds: int = 8) -> list[str]:
    """Add what the guest's own pip finds missing: pip download judges environment markers by
    the host's Python, so dependencies only older Pythons need (exceptiongroup, tomli, ...)
    are never fetched for them. `check(argv) -> (rc, output)` runs pip in the guest's rootfs
    against `dest`. Returns the requirements added."""
    added = []
    for _ in range(rounds):
        rc, out = check(requirements)
        if rc == 0:
            return added
        m = MISSING.search(out)
        if not m:
            raise SystemExit(f"vm build: the guest's pip cannot resolve the wheels:\n{out[-2000:]}")
        download(python, [m.group(1)], dest)
        added.append(m.group(1))
    raise SystemExit(f"vm build: wheels still incomplete after {rounds} rounds: {added}")


def guest_check_script(wheel_dir: str, requirements: list[str]) -> str:
    """A dry resolution with the guest's pip, offline, against wheel_dir."""
    return (f"rm -rf /tmp/wheel-check && python3 -m pip download -q --disable-pip-version-check --no-index "
            f"--find-links {wheel_dir} -d /tmp/wheel-check {' '.join(shlex.quote(r) for r in requirements)} 2>&1; "
            f"rc=$?; rm -rf /tmp/wheel-check; exit $rc")
