"""What an image is made of, hashed: a changed recipe means a new image file name."""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

try:  # the VM tier runs on the host, but the tree keeps the 3.9 floor
    import tomllib
except ImportError:
    import tomli as tomllib

from . import suites

REPO = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/callerid-vm")
SSH_KEY = CACHE / "ssh" / "id_ed25519"
# The builder's own sources: editing any of them rebuilds every image.
BUILDER_FILES = ("suites.py", "recipe.py", "image.py", "wheels.py", "mirror.py")


def setup_packages() -> list[str]:
    """The packages=( ... ) array of scripts/setup.sh."""
    text = (REPO / "scripts" / "setup.sh").read_text()
    m = re.search(r"^packages=\((.*?)^\)", text, re.S | re.M)
    if not m:
        raise SystemExit("vm: cannot find packages=( ... ) in scripts/setup.sh")
    return m.group(1).split()


def python_requirements() -> list[str]:
    """Everything pip needs to install callerid[test] offline: build, runtime and test deps."""
    pp = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = list(pp["build-system"]["requires"]) + list(pp["project"].get("dependencies", []))
    for extra in pp["project"].get("optional-dependencies", {}).values():
        reqs += extra
    # wheel: older setuptools need it for editable installs; tomli: tomllib's backport (Python < 3.11)
    return sorted(set(reqs + ["wheel", "tomli; python_version < '3.11'"]))


@dataclass(frozen=True)
class Recipe:
    suite: suites.Suite
    packages: tuple[str, ...]
    requirements: tuple[str, ...]
    ssh_pubkey: str

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name in BUILDER_FILES:
            h.update(name.encode() + b"\0" + (Path(__file__).parent / name).read_bytes())
        for part in (self.suite.name, self.suite.python, *self.packages, "--", *self.requirements, self.ssh_pubkey):
            h.update(part.encode() + b"\0")
        return h.hexdigest()[:12]

    @property
    def stem(self) -> Path:
        return CACHE / "images" / f"{self.suite.name}-{self.digest}"

    @property
    def image(self) -> Path:
        return self.stem.with_suffix(".img")

    @property
    def kernel(self) -> Path:
        return self.stem.with_suffix(".vmlinuz")

    @property
    def initrd(self) -> Path:
        return self.stem.with_suffix(".initrd")

    def built(self) -> bool:
        return all(p.exists() for p in (self.image, self.kernel, self.initrd))


def for_suite(name: str) -> Recipe:
    from . import sshkey
    return Recipe(suites.get(name), tuple(suites.VM_PACKAGES) + tuple(setup_packages()),
                  tuple(python_requirements()), sshkey.public_key())
