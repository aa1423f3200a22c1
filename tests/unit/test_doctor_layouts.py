"""`callerid doctor` names every Slurm cgroup layout it meets, on fake cgroup trees."""

from __future__ import annotations

import pytest

from callerid.adopter.checks import check_slurm_layout

SLUID = "sBR1JB8J1YM400"


def hybrid(tmp_path):
    """Hybrid v1 (this development machine): controllers plus cgroup2 at unified/."""
    for c in ("freezer", "memory"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "cgroup.clone_children").write_text("0\n")
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    return tmp_path


def pure_v2(tmp_path):
    """A systemd host with cgroup v2 only (Debian 12/13's default)."""
    (tmp_path / "cgroup.controllers").write_text("")
    return tmp_path


def job_dirs(scope, *names):
    for name in names:
        (scope / name / "step_extern" / "user" / "task_special").mkdir(parents=True)


def one(root, node):
    (check,) = check_slurm_layout(str(root), node)
    return check


def test_v1_debian_multiple_slurmd_root(tmp_path):
    root = hybrid(tmp_path)
    for c in ("freezer", "memory"):
        (root / c / "slurm_n1" / "uid_1000" / "job_5" / "step_extern").mkdir(parents=True)
    c = one(root, "n1")
    assert c.status == "ok"
    assert c.detail == f"v1 {root}/freezer/slurm_n1; v1 {root}/memory/slurm_n1"


def test_v1_plain_slurm_root(tmp_path):
    root = hybrid(tmp_path)
    (root / "freezer" / "slurm").mkdir()
    assert one(root, "anything").detail == f"v1 {root}/freezer/slurm"


@pytest.mark.parametrize("scope", ["system.slice/slurmstepd.scope", "system.slice/n1_slurmstepd.scope"])
def test_v2_scope_with_or_without_the_node_prefix(tmp_path, scope):
    root = pure_v2(tmp_path)
    job_dirs(root / scope, "job_7", "system")
    c = one(root, "n1")
    assert (c.status, c.detail) == ("ok", f"v2 {root}/{scope} (jobs named by job id)")


def test_v2_sluid_named_jobs_slurm_26_05(tmp_path):
    root = pure_v2(tmp_path)
    job_dirs(root / "system.slice" / "n1_slurmstepd.scope", SLUID, "system")
    c = one(root, "n1")
    assert (c.status, c.detail) == ("ok", f"v2 {root}/system.slice/n1_slurmstepd.scope (jobs named by SLUID)")


def test_v2_under_the_hybrid_unified_mount(tmp_path):
    root = hybrid(tmp_path)
    job_dirs(root / "unified" / "system.slice" / "slurmstepd.scope", "job_1", f"job_{SLUID}")
    c = one(root, "n1")
    assert c.detail == f"v2 {root}/unified/system.slice/slurmstepd.scope (jobs named by SLUID and job id)"


def test_only_another_nodes_root_is_a_nodename_problem(tmp_path):
    root = pure_v2(tmp_path)
    job_dirs(root / "system.slice" / "cn-07_slurmstepd.scope", "job_1")
    c = one(root, "cn07")
    assert c.status == "fail"
    assert "(node cn-07, not cn07)" in c.detail and "set nodename in callerid.toml" in c.fix


def test_no_slurm_root_yet_is_a_warning(tmp_path):
    c = one(pure_v2(tmp_path), "n1")
    assert c.status == "warn" and "PrologFlags=contain" in c.fix
