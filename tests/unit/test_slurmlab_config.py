"""The Slurm lab's pure parts: rendered slurm.conf/cgroup.conf/PAM/ssh text, the host's cgroup version
from mountinfo, and the job cgroup layout for v1 and v2 agreeing with callerid's own discovery."""

from __future__ import annotations

import os

import pytest

from tests.helpers import require
from tests.infra.slurmlab import cgroups
from tests.infra.slurmlab.config import (
    PSA_PORT,
    cgroup_conf_text,
    known_hosts_text,
    make_nodes,
    pam_psa_text,
    slurm_conf_text,
    ssh_client_config_text,
)

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
# Debian 12 with systemd (the VM images of LAB-NOTES): one cgroup2 mount at the root.
PURE_V2 = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""
LEGACY_NO_FREEZER = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"


def conf_keys(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            for tok in line.split() if line.startswith(("NodeName=", "PartitionName=")) else [line]:
                key, sep, value = tok.partition("=")
                assert sep and key and value, f"not key=value: {line!r}"
                out.setdefault(key, value)
    return out


def test_slurm_conf_names_every_node_and_the_private_paths(tmp_path):
    nodes = make_nodes(3)
    keys = conf_keys(slurm_conf_text(tmp_path, nodes, "/run/x/munge.sock"))
    assert keys["SlurmctldHost"] == "node1(198.18.40.1)"
    assert keys["AuthInfo"] == "socket=/run/x/munge.sock"
    assert keys["ProctrackType"] == "proctrack/cgroup" and keys["PrologFlags"] == "contain"
    assert all(v.startswith(str(tmp_path)) for k, v in keys.items() if k.endswith(("File", "Location", "Dir")))
    text = slurm_conf_text(tmp_path, nodes, "/s")
    for n in nodes:
        assert f"NodeName={n.name} NodeAddr={n.ip} " in text
    assert "Nodes=node1,node2,node3 " in text


@pytest.mark.parametrize("count", [0, 17])
def test_node_count_is_bounded(count):
    with pytest.raises(ValueError):
        make_nodes(count)


def test_cgroup_conf_v1_uses_the_host_hierarchies():
    keys = conf_keys(cgroup_conf_text("v1"))
    assert keys["CgroupPlugin"] == "cgroup/v1" and keys["CgroupAutomount"] == "no"
    assert "IgnoreSystemd" not in keys


def test_cgroup_conf_v2_makes_the_stepd_scope_without_systemd():
    keys = conf_keys(cgroup_conf_text("v2"))
    assert keys["CgroupPlugin"] == "cgroup/v2"
    assert keys["IgnoreSystemd"] == "yes" and keys["CgroupAutomount"] == "yes"
    assert keys["ConstrainRAMSpace"] == "yes" and keys["CgroupMountpoint"] == "/sys/fs/cgroup"


def test_cgroup_conf_keys_are_documented_by_the_installed_slurm():
    import gzip
    man = "/usr/share/man/man5/cgroup.conf.5.gz"
    require(os.path.exists(man), f"{man} (Debian slurm-client, installed by scripts/setup.sh)")
    with gzip.open(man, "rt") as f:
        doc = f.read()
    if "\\fBCgroupPlugin\\fR" not in doc:
        # Slurm before 21.08 (Debian 11's 20.11): cgroup v1 only, chosen without a CgroupPlugin
        # key. The lab needs 21.08 or later (docs/VM.md); the rest of its v1 keys must still hold.
        assert "cgroup/v2" not in doc, "this Slurm knows cgroup/v2 but not CgroupPlugin?"
        versions, unsupported = ("v1",), {"CgroupPlugin"}
    else:
        versions, unsupported = ("v1", "v2"), set()
    for version in versions:
        for key in set(conf_keys(cgroup_conf_text(version))) - unsupported:
            assert f"\\fB{key}\\fR" in doc, key


def test_cgroup_conf_rejects_unknown_versions():
    with pytest.raises(ValueError):
        cgroup_conf_text("v3")


def test_mountinfo_hybrid_is_v1_with_unified_beside():
    host = cgroups.parse_mountinfo(HYBRID)
    assert host.version == "v1" and host.v2_mount == "/sys/fs/cgroup/unified"
    assert "/sys/fs/cgroup/freezer" in host.v1_mounts
    assert cgroups.preflight_problems(host, None) == []
    assert cgroups.slurm_tops("node2", host)[:3] == [
        cgroups.Path(f"/sys/fs/cgroup/{c}/slurm_node2") for c in ("cpuset", "memory", "freezer")]
    assert cgroups.slurmd_cgroup("node2", host) is None


def test_mountinfo_pure_v2():
    host = cgroups.parse_mountinfo(PURE_V2)
    assert host.version == "v2" and host.v1_mounts == ()
    assert cgroups.slurm_tops("node2", host) == [
        cgroups.Path("/sys/fs/cgroup/system.slice/node2_slurmstepd.scope")]
    assert cgroups.slurmd_cgroup("node2", host).parent == cgroups.Path("/sys/fs/cgroup/system.slice")
    assert cgroups.preflight_problems(host, "cpuset cpu io memory pids") == []
    assert "memory" in cgroups.preflight_problems(host, "cpuset cpu io pids")[0]


def test_v2_slurmd_under_systemd_runs_in_a_delegated_transient_scope():
    host = cgroups.parse_mountinfo(PURE_V2)
    cg = cgroups.slurmd_cgroup("node2", host, systemd=True)
    assert cg == cgroups.Path("/sys/fs/cgroup/system.slice/cidlab-slurmd-node2.scope")
    from tests.infra.slurmlab.procctl import node_argv
    argv = node_argv(["slurmd", "-D"], "/run/netns/cidlab-node2", "node2", scope=cgroups.systemd_scope_argv(cg))
    assert argv[0] == "systemd-run" and "--scope" in argv and "--unit=cidlab-slurmd-node2.scope" in argv
    assert "--slice=system.slice" in argv and argv[argv.index("-p") + 1] == "Delegate=yes"
    order = [argv.index(w) for w in ("systemd-run", "nsenter", "unshare", "slurmd")]
    assert order == sorted(order), argv


def test_mountinfo_v1_without_freezer_is_refused():
    assert "freezer" in cgroups.preflight_problems(cgroups.parse_mountinfo(LEGACY_NO_FREEZER), None)[0]


V1_SESSION = """\
9:name=systemd:/
6:freezer:/slurm_node2/uid_1001/job_7/step_extern
4:memory:/slurm_node2/uid_1001/job_7/step_extern
3:cpuset:/slurm_node2/uid_1001/job_7/step_extern
0::/
"""
V2_SESSION = "0::/system.slice/node2_slurmstepd.scope/job_7/step_extern/user/task_special\n"


def test_job_steps_v1_every_job_hierarchy():
    assert cgroups.job_steps(V1_SESSION, "v1") == {"freezer": (7, "extern"), "cpuset": (7, "extern"),
                                                   "memory": (7, "extern")}


def test_job_steps_v1_partial_adoption_shows():
    text = V1_SESSION.replace("4:memory:/slurm_node2/uid_1001/job_7/step_extern", "4:memory:/process_api/x")
    assert cgroups.job_steps(text, "v1")["memory"] is None


def test_job_steps_v2_unified_line():
    assert cgroups.job_steps(V2_SESSION, "v2") == {"": (7, "extern")}
    assert cgroups.job_steps("0::/init.scope\n", "v2") == {"": None}
    # a hybrid host's unified line never counts as a v1 job hierarchy
    assert cgroups.job_steps(V2_SESSION, "v1") == {"freezer": None, "cpuset": None, "memory": None}


def test_v2_layout_the_lab_expects_is_what_callerid_finds(tmp_path):
    """A job made where slurm_tops says Slurm puts it (v2) is found by callerid's adopter discovery."""
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu memory pids\n")
    host = cgroups.HostCgroups("v2", (), str(tmp_path))
    leaf = cgroups.slurm_tops("node2", host)[0] / "job_7" / "step_extern" / "user" / "task_special"
    leaf.mkdir(parents=True)
    (leaf / "cgroup.procs").write_text(f"{os.getpid()}\n")
    job = cgroups.find_job("node2", 7, root=tmp_path)
    assert job is not None and job.layout == "v2" and job.extern == (str(leaf),)
    assert cgroups.job_dirs(job) == [leaf.parents[2]]
    assert cgroups.job_pids(job) == {os.getpid()}
    assert cgroups.find_job("node1", 7, root=tmp_path) is None  # another node's scope is not ours


def test_pam_psa_adds_service_and_nodename_unless_given():
    text = pam_psa_text("/lib/security/pam_slurm_adopt.so", "sshd-psa-node2", "node2", ["log_level=debug"])
    assert "pam_slurm_adopt.so service=sshd-psa-node2 nodename=node2 log_level=debug" in text
    text = pam_psa_text("/m.so", "s", "node2", ["service=other", "nodename=x"])
    assert "/m.so service=other nodename=x\n" in text


def test_ssh_client_and_known_hosts_cover_both_sshds():
    nodes = make_nodes(2)
    known = known_hosts_text(nodes, {"node1": "ssh-ed25519 AAA1", "node2": "ssh-ed25519 AAA2"})
    assert "node2,198.18.40.2,fd00:40::2 ssh-ed25519 AAA2" in known
    assert f"[node2]:{PSA_PORT},[198.18.40.2]:{PSA_PORT},[fd00:40::2]:{PSA_PORT} ssh-ed25519 AAA2" in known
    cfg = ssh_client_config_text(nodes)
    assert "Host node1-psa\n  HostName 198.18.40.1\n  Port 2222" in cfg and "StrictHostKeyChecking yes" in cfg


def test_node_argv_joins_cgroup_then_netns_then_uts_then_user():
    from pathlib import Path

    from tests.infra.slurmlab.config import LabUser
    from tests.infra.slurmlab.procctl import node_argv
    u = LabUser("cidlab1", 1001, 1002, "/home/cidlab1")
    argv = node_argv(["sleep", "1"], "/run/netns/cidlab-node2", "node2", u, Path("/sys/fs/cgroup/x"))
    order = [argv.index(w) for w in ("/bin/sh", "nsenter", "unshare", "setpriv", "sleep")]
    assert order == sorted(order), argv
    assert "/sys/fs/cgroup/x/cgroup.procs" in argv and "--net=/run/netns/cidlab-node2" in argv
    assert "--reuid=1001" in argv and "--regid=1002" in argv and "--init-groups" in argv
    assert argv[argv.index("unshare"):][:7] == ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"',
                                                "node2"]
    assert node_argv(["true"], None) == ["true"]


def test_v2_slurmd_cgroup_gets_the_controllers_it_can_have(tmp_path):
    """Each level's cgroup.subtree_control gains the lab's controllers that the level offers."""
    host = cgroups.HostCgroups("v2", (), str(tmp_path))
    target = cgroups.slurmd_cgroup("node1", host)
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (tmp_path / "system.slice").mkdir()
    (tmp_path / "system.slice" / "cgroup.controllers").write_text("cpu io memory pids\n")  # no cpuset offered
    cgroups.delegate_slurmd_cgroup(target, root=tmp_path)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +cpuset +memory +pids"
    assert (tmp_path / "system.slice" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert target.is_dir() and target.name == "cidlab-slurmd-node1.service"
