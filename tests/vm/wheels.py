"""PyPI wheels for the guest's Python, fetched on the host: pip inside a guest has no index access."""

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
