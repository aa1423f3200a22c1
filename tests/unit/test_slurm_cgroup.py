"""Table tests for callerid.slurm_cgroup on realistic /proc/<pid>/cgroup texts."""

from __future__ import annotations

import pytest

from callerid.slurm_cgroup import JobRef, is_job_identity, job_from_cgroup_path, job_from_proc_cgroup, job_order

# Debian 12 hybrid lab node, Slurm 22.05 cgroup/v1, root named slurm_<node>:
# the extern step's sleep, as proctrack/cgroup + task/cgroup place it.
DEBIAN_EXTERN = """\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/slurm_node1/uid_1000/job_42/step_extern
5:devices:/slurm_node1/uid_1000/job_42/step_extern
4:memory:/slurm_node1/uid_1000/job_42/step_extern
3:cpuset:/slurm_node1/uid_1000/job_42/step_extern
2:cpuacct:/
1:cpu:/
0::/
"""

# systemd hybrid (RHEL 8 style): 10 v1 controllers, name=systemd, and the unified
# hierarchy; a task of step 0 with jobacct_gather/cgroup (task_0 in memory, cpuacct).
HYBRID_STEP0_TASK = """\
12:pids:/system.slice/slurmd.service
11:hugetlb:/
10:perf_event:/
9:net_cls,net_prio:/
8:rdma:/
7:cpu,cpuacct:/slurm_cn-07/uid_1000/job_4242/step_0/task_0
6:memory:/slurm_cn-07/uid_1000/job_4242/step_0/task_0
5:devices:/slurm_cn-07/uid_1000/job_4242/step_0
4:blkio:/system.slice/slurmd.service
3:freezer:/slurm_cn-07/uid_1000/job_4242/step_0
2:cpuset:/slurm_cn-07/uid_1000/job_4242/step_0
1:name=systemd:/system.slice/slurmd.service
0::/unified-path
"""

# Plain "slurm" root, batch step, freezer listed after memory.
V1_PLAIN_BATCH = """\
11:memory:/slurm/uid_2001/job_7/step_batch/task_0
10:freezer:/slurm/uid_2001/job_7/step_batch
9:cpuset:/slurm/uid_2001/job_7/step_batch
1:name=systemd:/user.slice/user-2001.slice/session-4.scope
"""

# No freezer match (proctrack/linuxproc): take the first v1 controller that matches.
V1_NO_FREEZER = """\
6:freezer:/
4:memory:/slurm/uid_1000/job_9/step_0/task_1
3:cpuset:/slurm/uid_1000/job_9/step_0
0::/
"""

# A process sitting at job level (e.g. moved there by hand): no step.
V1_JOB_LEVEL = "6:freezer:/slurm/uid_0/job_5\n"

V2_EXTERN = "0::/system.slice/slurmstepd.scope/job_42/step_extern/user/task_special\n"
V2_EXTERN_STEPD = "0::/system.slice/slurmstepd.scope/job_42/step_extern/slurm\n"
V2_BATCH = "0::/system.slice/slurmstepd.scope/job_43/step_batch/user/task_0\n"
V2_STEP0_MULTI = "0::/system.slice/node2_slurmstepd.scope/job_44/step_0/user/task_1\n"
V2_INTERACTIVE = "0::/system.slice/gamba1_slurmstepd.scope/job_3385/step_interactive/user/task_0\n"
# CgroupSlice=compute.slice nests the scope under another slice.
V2_CUSTOM_SLICE = "0::/compute.slice/compute-slurm.slice/slurmstepd.scope/job_45/step_extern/user/task_special\n"
# Slurm 26.05 default: bare SLUID (the sluid2str test vector of src/common/sluid.c).
V2_SLUID = "0::/system.slice/slurmstepd.scope/sBR1JB8J1YM400/step_extern/user/task_special\n"
V2_JOB_SLUID = "0::/system.slice/slurmstepd.scope/job_sEKNKTV3WPV500/step_0/user/task_0\n"

# Hybrid machine where both hierarchies carry a Slurm path: v1 freezer wins.
BOTH = """\
6:freezer:/slurm/uid_1000/job_50/step_extern
0::/system.slice/slurmstepd.scope/job_51/step_extern/user/task_special
"""


def ref(job, uid, step, node, layout, controller, path):
    return JobRef(str(job), uid, step, node, layout, controller, path)


SLURM_CASES = [
    ("debian-slurm_node-extern", DEBIAN_EXTERN,
     ref(42, 1000, "extern", "node1", "v1", "freezer", "/slurm_node1/uid_1000/job_42")),
    ("hybrid-10-controllers-step0-task", HYBRID_STEP0_TASK,
     ref(4242, 1000, "0", "cn-07", "v1", "freezer", "/slurm_cn-07/uid_1000/job_4242")),
    ("v1-plain-batch", V1_PLAIN_BATCH,
     ref(7, 2001, "batch", None, "v1", "freezer", "/slurm/uid_2001/job_7")),
    ("v1-no-freezer", V1_NO_FREEZER,
     ref(9, 1000, "0", None, "v1", "memory", "/slurm/uid_1000/job_9")),
    ("v1-job-level", V1_JOB_LEVEL,
     ref(5, 0, None, None, "v1", "freezer", "/slurm/uid_0/job_5")),
    ("v2-extern", V2_EXTERN,
     ref(42, None, "extern", None, "v2", None, "/system.slice/slurmstepd.scope/job_42")),
    ("v2-extern-stepd", V2_EXTERN_STEPD,
     ref(42, None, "extern", None, "v2", None, "/system.slice/slurmstepd.scope/job_42")),
    ("v2-batch", V2_BATCH,
     ref(43, None, "batch", None, "v2", None, "/system.slice/slurmstepd.scope/job_43")),
    ("v2-step0-multiple-slurmd", V2_STEP0_MULTI,
     ref(44, None, "0", "node2", "v2", None, "/system.slice/node2_slurmstepd.scope/job_44")),
    ("v2-interactive", V2_INTERACTIVE,
     ref(3385, None, "interactive", "gamba1", "v2", None,
         "/system.slice/gamba1_slurmstepd.scope/job_3385")),
    ("v2-custom-slice", V2_CUSTOM_SLICE,
     ref(45, None, "extern", None, "v2", None,
         "/compute.slice/compute-slurm.slice/slurmstepd.scope/job_45")),
    ("v2-sluid", V2_SLUID,
     ref("sBR1JB8J1YM400", None, "extern", None, "v2", None,
         "/system.slice/slurmstepd.scope/sBR1JB8J1YM400")),
    ("v2-job_sluid", V2_JOB_SLUID,
     ref("sEKNKTV3WPV500", None, "0", None, "v2", None,
         "/system.slice/slurmstepd.scope/job_sEKNKTV3WPV500")),
    ("both-hierarchies-prefer-v1", BOTH,
     ref(50, 1000, "extern", None, "v1", "freezer", "/slurm/uid_1000/job_50")),
]


@pytest.mark.parametrize("text,want", [c[1:] for c in SLURM_CASES], ids=[c[0] for c in SLURM_CASES])
def test_slurm_processes(text, want):
    assert job_from_proc_cgroup(text) == want


NOT_SLURM = [
    # This lab: every shell-started process sits in a session cgroup (no systemd).
    ("lab-session", """\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/4493a8004c6819e4c8c57d63a57ad646
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""),
    ("systemd-login-session", "0::/user.slice/user-1000.slice/session-3.scope\n"),
    ("slurmd-service", "0::/system.slice/slurmd.service\n"),
    ("stepd-infinity", "0::/system.slice/slurmstepd.scope/system\n"),
    ("hand-started-slurmd", "0::/system.slice/gamba1_slurmstepd.scope/slurmd\n"),
    ("scope-itself", "0::/system.slice/slurmstepd.scope\n"),
    ("empty", ""),
    ("garbage", "no colons here\n::\n0:\n"),
    # Decoys: "job_" elsewhere, or Slurm look-alikes a user can create.
    ("user-job-scope", "0::/user.slice/user-1000.slice/user@1000.service/app.slice/job_foo.scope\n"),
    ("user-app-job-dir", "0::/user.slice/user-1000.slice/user@1000.service/app.slice/job_42/step_0\n"),
    ("forged-v2-in-user-delegation",
     "0::/user.slice/user-1000.slice/user@1000.service/slurmstepd.scope/job_42/step_extern/user/task_0\n"),
    ("forged-v1-in-name-systemd",
     "1:name=systemd:/user.slice/user-1000.slice/user@1000.service/slurm/uid_0/job_1/step_extern\n0::/\n"),
    ("v1-no-uid", "6:freezer:/slurm/job_42/step_0\n"),
    ("v1-non-numeric-job", "6:freezer:/slurm/uid_1000/job_42x/step_0\n"),
    ("v1-wrong-root", "6:freezer:/slurmfoo/uid_1000/job_42/step_0\n"),
    ("v1-empty-node", "6:freezer:/slurm_/uid_1000/job_42/step_0\n"),
    ("v1-path-in-v2", "0::/slurm/uid_1000/job_42/step_0\n"),
    ("v2-path-in-v1", "6:freezer:/system.slice/slurmstepd.scope/job_42/step_0\n"),
    ("v2-not-a-scope", "0::/system.slice/notslurmstepd.scope/job_42/step_0\n"),
    ("v2-scope-suffix", "0::/system.slice/slurmstepd.scope.d/job_42/step_0\n"),
    ("v2-non-numeric-job", "0::/system.slice/slurmstepd.scope/job_abc/step_0\n"),
    ("v2-sluid-lower-case", "0::/system.slice/slurmstepd.scope/sbr1jb8j1ym400/step_0\n"),
    ("v2-sluid-bad-letter", "0::/system.slice/slurmstepd.scope/sBR1JB8J1YM40I/step_0\n"),
    ("v2-sluid-too-short", "0::/system.slice/slurmstepd.scope/sBR1JB8J1YM40/step_0\n"),
    # Slurm job ids are 32-bit and never 0: anything else is not a job Slurm made.
    ("v1-job-id-too-large", "6:freezer:/slurm/uid_1000/job_4294967296/step_0\n"),
    ("v2-job-id-zero", "0::/system.slice/slurmstepd.scope/job_0/step_0\n"),
]


@pytest.mark.parametrize("text", [c[1] for c in NOT_SLURM], ids=[c[0] for c in NOT_SLURM])
def test_not_slurm(text):
    assert job_from_proc_cgroup(text) is None


def test_path_with_colon_is_kept_whole():
    text = "6:freezer:/slurm_a:b/uid_1/job_2/step_extern\n"
    assert job_from_proc_cgroup(text).node == "a:b"


def test_step_prefix_without_name_is_no_step():
    assert job_from_cgroup_path("/slurm/uid_1/job_2/step_", "v1").step is None


def test_cgroup_path_helper():
    got = job_from_cgroup_path("/slurm_n1/uid_5/job_6/step_batch/task_0", "v1", "memory")
    assert got == ref(6, 5, "batch", "n1", "v1", "memory", "/slurm_n1/uid_5/job_6")
    assert job_from_cgroup_path("/system.slice/slurmstepd.scope/job_6", "v2").step is None
    assert job_from_cgroup_path("/slurm/uid_5/job_6", "v2") is None


def test_bad_layout_is_an_error():
    with pytest.raises(ValueError):
        job_from_cgroup_path("/slurm/uid_5/job_6", "v3")


def test_jobref_is_frozen():
    r = job_from_proc_cgroup(V2_EXTERN)
    with pytest.raises(AttributeError):
        r.job_id = "1"


def test_job_id_is_a_canonical_string():
    assert job_from_proc_cgroup("6:freezer:/slurm/uid_1/job_007/step_0\n").job_id == "7"
    assert job_from_proc_cgroup("0::/system.slice/slurmstepd.scope/job_4294967295/step_0\n").job_id == "4294967295"


@pytest.mark.parametrize("text, ok", [
    ("1", True), ("4294967295", True), ("sBR1JB8J1YM400", True),
    ("0", False), ("007", False), ("4294967296", False), ("", False), ("-1", False), ("42 ", False),
    ("sbr1jb8j1ym400", False), ("SBR1JB8J1YM400", False), ("sBR1JB8J1YM40I", False), ("job_42", False),
])
def test_is_job_identity(text, ok):
    assert is_job_identity(text) is ok


def test_job_order_numbers_by_value_sluids_by_creation():
    assert sorted(["10", "9", "100"], key=job_order) == ["9", "10", "100"]
    # sluid2str of (cluster << 52 | ms << 10 | seq): same cluster, later ms or seq sorts later.
    def sluid(cluster, ms, seq):
        value = cluster << 52 | ms << 10 | seq
        return "s" + "".join("0123456789ABCDEFGHJKMNPQRSTVWXYZ"[(value >> 5 * i) & 31] for i in range(12, -1, -1))
    assert sluid(0xbc0, 0x64b4483ea1000 >> 10, 0) == "sBR1JB8J1YM400"   # Slurm's own test vector
    older, newer, newest = sluid(7, 1_000_000, 5), sluid(7, 1_000_000, 6), sluid(7, 1_000_001, 0)
    assert sorted([newest, older, newer], key=job_order) == [older, newer, newest]
