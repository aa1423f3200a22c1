"""adopter.jobs on fake cgroup trees in tmp_path (plain dirs, cgroup.procs as text; no root needed)."""

from __future__ import annotations

import os

import pytest

from callerid.adopter import jobs
from callerid.adopter.jobs import LocalJob, choose_owner, classify_extern, list_jobs, own_roots, root_node
from tests.helpers import require_root
from tests.infra.jobtree import jobs_of

V1_CTRLS = ("freezer", "cpuset", "memory", "devices", "cpuacct")
SLUID = "sBR1JB8J1YM400"  # Slurm's own sluid unit test value


class FakeNode:
    """A fake /sys/fs/cgroup (hybrid: v1 controllers + unified) and a fake /proc."""

    def __init__(self, tmp_path, v1=V1_CTRLS, pure_v2=False):
        self.root = tmp_path / "cgroup"
        self.proc = tmp_path / "proc"
        self.proc.mkdir()
        if pure_v2:
            self.v2 = self.root
            self.v2.mkdir()
        else:
            self.root.mkdir()
            for c in (*v1, "pids", "systemd"):
                (self.root / c).mkdir()
                (self.root / c / "cgroup.clone_children").write_text("0\n")
                (self.root / c / "cgroup.procs").write_text("")
            self.v2 = self.root / "unified"
            self.v2.mkdir()
        (self.v2 / "cgroup.controllers").write_text("")
        (self.v2 / "cgroup.procs").write_text("")

    def cg(self, path, pids=()):
        path.mkdir(parents=True, exist_ok=True)
        (path / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
        return path

    def v1_job(self, uid, job, node="n1", ctrls=V1_CTRLS, steps=("extern", "0"), rootname=None):
        rootname = rootname or (f"slurm_{node}" if node else "slurm")
        for c in ctrls:
            jdir = self.root / c / rootname / f"uid_{uid}" / f"job_{job}"
            self.cg(jdir)
            for s in steps:
                self.cg(jdir / f"step_{s}")
        return {c: str(self.root / c / rootname / f"uid_{uid}" / f"job_{job}" / "step_extern") for c in ctrls}

    def v2_job(self, jobdir, extern_pids=(), step0_pids=(), scope="system.slice/slurmstepd.scope", leaf=True):
        jdir = self.v2 / scope / jobdir
        self.cg(jdir / "step_extern" / "slurm", [1])  # slurmstepd, root
        if leaf:
            self.cg(jdir / "step_extern" / "user" / "task_special", extern_pids)
        else:
            self.cg(jdir / "step_extern" / "user")
        if step0_pids:
            self.cg(jdir / "step_0" / "user" / "task_0", step0_pids)
        return str(jdir / "step_extern" / "user" / "task_special")

    def process(self, pid, uid):
        d = self.proc / str(pid)
        d.mkdir()
        d.joinpath("status").write_text(
            f"Name:\tsleep\nTgid:\t{pid}\nPid:\t{pid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n")

    def list(self, node="n1"):
        return list_jobs(node, str(self.root), proc=str(self.proc))


@pytest.fixture
def fake(tmp_path):
    return FakeNode(tmp_path)


# ------------------------------------------------------------------- pure parts

@pytest.mark.parametrize("rel, layout, want", [
    ("/slurm_n1/uid_1000/job_42/step_extern", "v1", ("42", 1000, "n1")),
    ("/slurm/uid_0/job_1/step_extern", "v1", ("1", 0, None)),
    ("/slurm_cn-07.a_b/uid_5/job_9/step_extern", "v1", ("9", 5, "cn-07.a_b")),
    ("/slurm_n1/uid_1000/job_42/step_0", "v1", None),
    ("/slurm_n1/uid_1000/job_42/step_extern/task_0", "v1", None),
    ("/slurm_n1/uid_1000/job_42", "v1", None),
    ("/x/slurm_n1/uid_1000/job_42/step_extern", "v1", None),  # not at the hierarchy's top
    ("/slurm_n1/uid_x/job_42/step_extern", "v1", None),
    ("/system.slice/slurmstepd.scope/job_7/step_extern/user/task_special", "v2", ("7", None, None)),
    ("/slurmstepd.scope/job_7/step_extern/user/task_special", "v2", ("7", None, None)),
    ("/system.slice/n2_slurmstepd.scope/job_7/step_extern/user/task_special", "v2", ("7", None, "n2")),
    (f"/system.slice/slurmstepd.scope/{SLUID}/step_extern/user/task_special", "v2", (SLUID, None, None)),
    (f"/system.slice/slurmstepd.scope/job_{SLUID}/step_extern/user/task_special", "v2", (SLUID, None, None)),
    (f"/system.slice/n2_slurmstepd.scope/{SLUID}/step_extern/user/task_special", "v2", (SLUID, None, "n2")),
    ("/system.slice/slurmstepd.scope/job_7/step_extern/slurm", "v2", None),
    ("/system.slice/slurmstepd.scope/job_7/step_extern/user/task_0", "v2", None),
    ("/system.slice/slurmstepd.scope/job_7/step_extern", "v2", None),
    ("/system.slice/slurmstepd.scope/job_7/step_0/user/task_special", "v2", None),
    ("/system.slice/slurmstepd.scope/system/step_extern/user/task_special", "v2", None),
    ("/user.slice/user-1000.slice/user@1000.service/slurmstepd.scope/job_7/step_extern/user/task_special",
     "v2", None),
])
def test_classify_extern(rel, layout, want):
    ref = classify_extern(rel, layout)
    got = None if ref is None else (ref.job_id, ref.uid, ref.node)
    assert got == want


@pytest.mark.parametrize("name, layout, want", [
    ("slurm", "v1", (True, None)), ("slurm_n1", "v1", (True, "n1")), ("slurm_", "v1", (False, None)),
    ("slurmd", "v1", (False, None)), ("process_api", "v1", (False, None)),
    ("slurmstepd.scope", "v2", (True, None)), ("n1_slurmstepd.scope", "v2", (True, "n1")),
    ("a_b_slurmstepd.scope", "v2", (True, "a_b")), ("_slurmstepd.scope", "v2", (False, None)),
    ("slurmd.service", "v2", (False, None)),
])
def test_root_node(name, layout, want):
    assert root_node(name, layout) == want


@pytest.mark.parametrize("nodes, want", [
    (["n1", "n2", None], {"n1"}),      # our named root wins over the plain one
    (["n2", None], {None}),            # plain root only when ours has no named root
    (["n2", "n3"], set()),             # other nodes' roots are never ours
    ([None], {None}),
    ([], set()),
])
def test_own_roots(nodes, want):
    assert own_roots(nodes, "n1") == want


def test_v1_controller_order():
    names = ["systemd", "unified", "pids", "memory", "cpu,cpuacct", "devices", "cpuset", "freezer", "name=x",
             "net_cls,net_prio", "bogus", "misc"]
    assert jobs.v1_controller_order(names) == [
        "freezer", "cpuset", "memory", "devices", "cpu,cpuacct", "misc", "net_cls,net_prio", "pids"]


@pytest.mark.parametrize("uids, want", [
    ([], -1), ([0, 0], -1), ([1000], 1000), ([0, 1000, 0], 1000),
    ([1001, 1000, 1001], 1001), ([1001, 1000], 1000),  # tie: lowest uid, deterministic
    ([-1, 5], 5),
])
def test_choose_owner(uids, want):
    assert choose_owner(uids) == want


def test_parse_helpers():
    assert jobs.parse_procs("12\n7\n12\n") == [12, 7, 12]
    assert jobs.parse_procs("") == []


# ------------------------------------------------------------------- v1 trees

def test_v1_debian_layout_all_controllers(fake):
    want = fake.v1_job(1000, 42)
    fake.v1_job(1001, 43)
    got = {(j.job_id, j.uid): j for j in fake.list()}
    assert set(got) == {("42", 1000), ("43", 1001)}
    j = got[("42", 1000)]
    assert j.layout == "v1"
    # freezer first (authoritative, the "job gone" probe), then task/cgroup's, then cpuacct
    assert j.extern == tuple(want[c] for c in ("freezer", "cpuset", "memory", "devices", "cpuacct"))
    assert all(os.path.isabs(d) for d in j.extern)


def test_v1_other_node_is_invisible(fake):
    fake.v1_job(1000, 42, node="n1")
    fake.v1_job(1000, 99, node="n2")
    fake.v1_job(1000, 77, node=None)  # plain "slurm": another build, not ours while slurm_n1 exists
    assert [j.job_id for j in fake.list("n1")] == ["42"]
    assert [j.job_id for j in fake.list("n2")] == ["99"]
    assert [j.job_id for j in fake.list("n3")] == ["77"]


def test_v1_plain_slurm_root(fake):
    fake.v1_job(1000, 5, node=None)
    assert [(j.job_id, j.uid) for j in fake.list("anything")] == [("5", 1000)]


def test_v1_no_extern_step_no_job(fake):
    fake.v1_job(1000, 42, steps=("batch", "0"))  # no PrologFlags=contain
    assert fake.list() == []


def test_v1_freezer_is_authoritative(fake):
    fake.v1_job(1000, 42)
    fake.v1_job(1000, 43, ctrls=("memory", "devices"))  # no freezer step_extern: not a job
    assert [j.job_id for j in fake.list()] == ["42"]


def test_v1_without_slurm_freezer_tree_any_controller_counts(fake):
    # proctrack/linuxproc + task/cgroup: nothing in freezer
    want = fake.v1_job(1000, 42, ctrls=("memory", "cpuset"))
    (j,) = fake.list()
    assert j.extern == (want["cpuset"], want["memory"])


def test_v1_extern_only_where_it_exists(fake):
    want = fake.v1_job(1000, 42, ctrls=("freezer", "memory"))
    fake.v1_job(1000, 42, ctrls=("devices",), steps=("0",))
    (j,) = fake.list()
    assert j.extern == (want["freezer"], want["memory"])


def test_v1_comounted_alias_written_once(tmp_path):
    fake = FakeNode(tmp_path, v1=("freezer", "cpu,cpuacct"))
    os.symlink("cpu,cpuacct", fake.root / "cpu")
    os.symlink("cpu,cpuacct", fake.root / "cpuacct")
    want = fake.v1_job(1000, 42, ctrls=("freezer", "cpu,cpuacct"))
    (j,) = fake.list()
    assert j.extern == (want["freezer"], want["cpu,cpuacct"])


def test_v1_ignores_named_and_unknown_hierarchies(fake):
    for name in ("systemd", "unified"):
        fake.cg(fake.root / name / "slurm_n1" / "uid_1000" / "job_9" / "step_extern")
    assert fake.list() == []


def test_start_is_step_extern_mtime_and_orders_jobs(fake):
    a = fake.v1_job(1000, 50)
    b = fake.v1_job(1000, 40)
    os.utime(a["freezer"], (1_000, 2_000))
    os.utime(b["freezer"], (1_000, 3_000))
    got = fake.list()
    assert [(j.job_id, j.start) for j in got] == [("50", 2_000.0), ("40", 3_000.0)]


def test_v1_dirs_not_owned_like_the_mount_are_forged(fake):
    require_root()  # chown
    fake.v1_job(1000, 42)
    forged = fake.v1_job(1000, 666)
    # Slurm makes job_<id> root-owned; one owned by the user was made by the user.
    os.chown(os.path.dirname(forged["freezer"]), 1000, 1000)
    assert [j.job_id for j in fake.list()] == ["42"]
    os.chown(os.path.dirname(forged["freezer"]), os.stat(fake.root / "freezer").st_uid, 0)
    os.chown(os.path.dirname(os.path.dirname(forged["memory"])), 1000, 1000)  # uid_1000 in memory
    (j42, j666) = fake.list()
    assert all("/memory/" not in d for d in j42.extern + j666.extern)


# ------------------------------------------------------------------- v2 trees

def test_v2_owner_from_extern_processes(fake):
    fake.process(100, 1000)
    fake.process(101, 0)     # an adopted sshd [priv]
    fake.process(102, 1000)
    fake.process(103, 2000)  # odd setuid helper; the majority wins
    leaf = fake.v2_job("job_7", extern_pids=[100, 101, 102, 103])
    (j,) = fake.list()
    assert j == LocalJob("7", 1000, j.start, "v2", (leaf,))


def test_v2_owner_fallback_to_job_subtree(fake):
    fake.process(200, 0)
    fake.process(201, 3000)
    fake.v2_job("job_8", extern_pids=[200], step0_pids=[201])
    (j,) = fake.list()
    assert j.uid == 3000


def test_v2_owner_unknown_is_minus_one_and_never_matched(fake):
    fake.process(300, 0)
    fake.v2_job("job_9", extern_pids=[300, 999999])  # 999999: exited, no /proc entry
    (j,) = fake.list()
    assert j.uid == -1
    assert jobs_of(-1, "n1", str(fake.root), proc=str(fake.proc)) == []
    assert jobs_of(0, "n1", str(fake.root), proc=str(fake.proc)) == []


def test_v2_sluid_and_job_id_dirs(fake):
    fake.process(400, 1000)
    fake.v2_job(SLUID, extern_pids=[400])
    fake.v2_job("job_11", extern_pids=[400])
    fake.v2_job("system")          # slurmstepd infinity's cgroup
    fake.cg(fake.v2 / "system.slice" / "slurmstepd.scope" / "slurmd")
    assert sorted(j.job_id for j in fake.list()) == ["11", SLUID]


def test_v2_without_task_special_not_listed(fake):
    fake.v2_job("job_12", leaf=False)
    assert fake.list() == []


def test_v2_multi_slurmd_scopes(fake):
    fake.process(500, 1000)
    fake.v2_job("job_1", [500], scope="system.slice/n1_slurmstepd.scope")
    fake.v2_job("job_2", [500], scope="system.slice/n2_slurmstepd.scope")
    fake.v2_job("job_3", [500], scope="system.slice/slurmstepd.scope")
    assert [j.job_id for j in fake.list("n1")] == ["1"]
    assert [j.job_id for j in fake.list("n2")] == ["2"]
    assert [j.job_id for j in fake.list("n9")] == ["3"]


def test_v2_scope_search_is_bounded_and_skips_user_slices(fake):
    fake.process(600, 1000)
    fake.v2_job("job_1", [600], scope="slurmstepd.scope")                                  # depth 1
    fake.v2_job("job_2", [600], scope="a/b/c/slurmstepd.scope")                            # depth 4
    fake.v2_job("job_3", [600], scope="a/b/c/d/slurmstepd.scope")                          # too deep
    fake.v2_job("job_4", [600], scope="user.slice/user-1000.slice/slurmstepd.scope")       # delegated
    fake.v2_job("job_5", [600], scope="x/user@1000.service/slurmstepd.scope")              # delegated
    assert sorted(j.job_id for j in fake.list()) == ["1", "2"]


def test_pure_v2_root_is_the_v2_mount(tmp_path):
    fake = FakeNode(tmp_path, pure_v2=True)
    fake.process(700, 1000)
    leaf = fake.v2_job("job_3", [700])
    assert jobs.default_v2_mount(str(fake.root)) == str(fake.root)
    assert [(j.job_id, j.extern) for j in fake.list()] == [("3", (leaf,))]


def test_stock_debian_v2_sluid_jobs_under_the_node_prefixed_scope(tmp_path):
    # What a systemd host with pure cgroup v2 has (LAB-NOTES "Virtual machines": Debian
    # builds Slurm with multiple-slurmd support, so the scope is <node>_slurmstepd.scope),
    # with Slurm 26.05's SLUID-named job directories (CgroupJobIdPaths=no).
    fake = FakeNode(tmp_path, pure_v2=True)
    fake.process(900, 1000)
    fake.process(901, 1001)
    scope = "system.slice/n1_slurmstepd.scope"
    older, newer = "s7000000001J00", "s7000000001J01"   # same millisecond, next sequence number
    mine_old = fake.v2_job(older, [900], scope=scope)
    mine_new = fake.v2_job(newer, [900], scope=scope)
    theirs = fake.v2_job("sBR1JB8J1YM400", [901], scope=scope)
    fake.v2_job("system", scope=scope)
    fake.v2_job("s7000000001J02", [900], scope="system.slice/n2_slurmstepd.scope")   # another node's
    for leaf in (mine_old, mine_new, theirs):
        os.utime(os.path.dirname(os.path.dirname(leaf)), (5_000, 5_000))   # step_extern: same start
    got = fake.list("n1")
    assert [(j.job_id, j.uid, j.extern) for j in got] == [
        (older, 1000, (mine_old,)), (newer, 1000, (mine_new,)), ("sBR1JB8J1YM400", 1001, (theirs,))]
    assert [j.job_id for j in jobs_of(1000, "n1", str(fake.root), proc=str(fake.proc))] == [older, newer]


def test_hybrid_default_v2_mount(fake):
    assert jobs.default_v2_mount(str(fake.root)) == str(fake.root / "unified")


def test_jobs_of_mixed_layouts(fake):
    fake.v1_job(1000, 42)
    fake.v1_job(1001, 43)
    fake.process(800, 1000)
    fake.v2_job("job_44", [800])
    mine = jobs_of(1000, "n1", str(fake.root), proc=str(fake.proc))
    assert sorted((j.job_id, j.layout) for j in mine) == [("42", "v1"), ("44", "v2")]
    assert [j.job_id for j in jobs_of(1001, "n1", str(fake.root), proc=str(fake.proc))] == ["43"]
    assert jobs_of(1002, "n1", str(fake.root), proc=str(fake.proc)) == []


def test_missing_root_lists_nothing(tmp_path):
    assert list_jobs("n1", str(tmp_path / "nope")) == []
