"""`pip install .` gives one top-level package, callerid, and a `callerid` command that works
outside the checkout (a wheel built from a copy of the tree, installed into a fresh venv)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", "results")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy: setuptools writes build/ and *.egg-info next to the sources."""
    import setuptools
    major = int(setuptools.__version__.split(".")[0])
    assert major >= 61, f"setuptools {setuptools.__version__} in this venv: pyproject.toml needs >= 61 " \
                        "(scripts/setup.sh installs it)"
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = list((tmp / "dist").glob("*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == ["callerid"], wheels
    (whl,) = wheels
    return whl


def test_wheel_holds_only_the_callerid_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"callerid", wheel.name.split("-py")[0] + ".dist-info"}, tops
    for sub in ("tracer", "adopter", "bpf", "dashboards", "linux"):
        assert f"callerid/{sub}/__init__.py" in names
    # package data read through importlib.resources
    bpf_sources = [f"callerid/bpf/{p.name}" for p in sorted((ROOT / "bpf").iterdir()) if p.suffix in (".c", ".h")]
    assert "callerid/bpf/callerid.h" in bpf_sources
    for data in (*bpf_sources, "callerid/adopter/callerid-profile.sh"):   # BCC compiles these, headers included
        assert data in names


def test_installed_command_works_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python3"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([str(py), "-c", "import callerid; print(callerid.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr  # not the checkout
    # every module imports from the installed copy (a subpackage missing from the wheel shows here)
    walk = ("import importlib, pkgutil, callerid\n"
            "for m in pkgutil.walk_packages(callerid.__path__, 'callerid.'):\n"
            "    importlib.import_module(m.name)\n")
    r = subprocess.run([str(py), "-c", walk], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["callerid", "config", "--doc"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "max_connections" in r.stdout, r.stdout + r.stderr
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = [p.name for p in site.iterdir() if p.name in ("tracer", "adopter", "bpf", "dashboards")]
    assert ours == [], f"generic top-level packages installed: {ours}"
