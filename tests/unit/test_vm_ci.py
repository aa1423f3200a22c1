"""What CI runs of the VM tier (`scripts/vm.sh ci`, called by scripts/test.sh): the demo and the
installed units in one image, every image's probe backends, and an opt-out that is named, documented and loud."""

from __future__ import annotations

import re
from pathlib import Path

from tests.vm import suites
from tests.vm.__main__ import CI_PLAN

ROOT = Path(__file__).resolve().parents[2]
TEST_SH = (ROOT / "scripts" / "test.sh").read_text()


def test_ci_plan_runs_the_demo_in_one_image_and_every_images_backends():
    plan = {name: steps.split(",") for name, steps in CI_PLAN}
    assert set(plan) == set(suites.SUITES), "every image's probe backends (smoke) run in CI"
    assert all("smoke" in steps for steps in plan.values())
    assert any("demo" in steps for steps in plan.values()), "the README's demo in one image"


def test_ci_plan_runs_the_demo_and_the_installed_units_in_one_image():
    # the README's demo and the .deb's systemd units in one image under systemd + cgroup v2
    # (tests/unit is the host suite's, on the same Debian 12 userland, just before); the kernel
    # tier and the lab run outside CI's 90 minutes (the comment on CI_PLAN says why)
    plan = {name: set(steps.split(",")) for name, steps in CI_PLAN}
    assert {"demo", "units"} <= plan["bookworm"], plan["bookworm"]


def test_test_sh_runs_the_vm_tier_and_its_opt_out_is_documented():
    assert re.search(r'scripts/vm\.sh" ci \|\| vm_rc=', TEST_SH), "test.sh must run `vm.sh ci`, keep its status"
    opt_out = set(re.findall(r"\b(CALLERID_SKIP_VM\w*)", TEST_SH))
    assert opt_out == {"CALLERID_SKIP_VM_TIER"}, opt_out
    for doc in ("README.md", "docs/VM.md"):
        assert "CALLERID_SKIP_VM_TIER=1" in (ROOT / doc).read_text(), f"{doc} must document the opt-out"
    assert "VM TIER SKIPPED" in TEST_SH, "skipping must be said aloud"
