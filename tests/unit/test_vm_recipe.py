"""The VM tier's recipe: what it reads from setup.sh and pyproject.toml, and when its hash changes."""

import dataclasses

from tests.vm import recipe, suites
from tests.vm.report import STEP, step_status


def make(**changes) -> recipe.Recipe:
    base = recipe.Recipe(suites.SUITES["bookworm"], ("gcc",), ("pytest>=7",), "ssh-ed25519 AAAA test")
    return dataclasses.replace(base, **changes)


def test_setup_packages_are_setup_sh_list():
    pkgs = recipe.setup_packages()
    assert "python3-bpfcc" in pkgs and "linux-headers-amd64" in pkgs
    assert all(p and not p.startswith("#") and "(" not in p for p in pkgs)


def test_requirements_cover_build_runtime_test_and_old_pythons():
    reqs = recipe.python_requirements()
    names = {r.split(";")[0].split(">")[0].split("=")[0].strip() for r in reqs}
    assert {"setuptools", "prometheus-client", "pytest", "pip", "tomli"} <= names


def test_digest_is_stable_and_follows_every_input():
    assert make().digest == make().digest
    others = [make(packages=("gcc", "make")), make(requirements=("pytest>=8",)), make(ssh_pubkey="other"),
              make(suite=suites.SUITES["trixie"])]
    assert len({make().digest, *(r.digest for r in others)}) == 1 + len(others)


def test_image_files_are_named_by_suite_and_digest():
    r = make()
    assert r.image.name == f"bookworm-{r.digest}.img"
    assert {r.kernel.suffix, r.initrd.suffix} == {".vmlinuz", ".initrd"}


def test_guest_step_lines_parse():
    m = STEP.match("vm-step unit rc=1 secs=278")
    assert (m[1], m[2], m[3]) == ("unit", "1", "278")
    assert [step_status(rc) for rc in (0, 1, 125)] == ["ok", "FAIL(1)", "not-run"]
