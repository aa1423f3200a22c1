"""Job discovery and adoption on the real cgroupfs (root): Slurm-layout trees made by JobTree."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from callerid.adopter import cgroupfs, jobs
from callerid.adopter.cgroupfs import AdoptError, adopt
from callerid.slurm_cgroup import job_from_cgroup_path, job_from_proc_cgroup
from tests.helpers import require
from tests.infra.jobtree import jobs_of, pid_in_extern, system_layout

ROOT = jobs.DEFAULT_ROOT
V2 = jobs.default_v2_mount(ROOT)   # the root itself on a pure cgroup v2 host, else ROOT/unified
UID_A, UID_B = 60001, 60002
# Job ids unique to this run: other tests may make v2 jobs under the same shared
# system.slice/slurmstepd.scope at the same time.
BASE = 700_000 + (os.getpid() % 10_000) * 10
ORDER = ("freezer", "cpuset", "memory", "devices", "cpuacct")


def require_v2():
    require(os.geteuid() == 0, "root (creating job cgroups, moving processes)")
    require(os.path.ismount(V2) and jobs.is_cgroup2(V2), f"cgroup2 at {V2}")


def v1_ctrls(root: str):
    return [c for c in ORDER if os.path.ismount(f"{root}/{c}")]


@pytest.fixture(scope="module")
def v1_root():
    """A cgroup root with a v1 freezer hierarchy: the host's where it mounts one (hybrid), else
    v1 hierarchies this module mounts in a directory of its own. A pure cgroup v2 host (Debian
    11-13's default) can: v2 has no freezer or devices controller, and leaves cpuset free unless
    a unit enables it. Slurm's cgroup/v1 plugin runs on such hosts the same way."""
    require(os.geteuid() == 0, "root (creating job cgroups, moving processes)")
    if system_layout(ROOT) == "v1":
        yield ROOT
        return
    d = tempfile.mkdtemp(prefix="callerid-cgv1-")
    mounted = []
    try:
        for c in ORDER:
            os.mkdir(f"{d}/{c}")
            r = subprocess.run(["mount", "-t", "cgroup", "-o", c, f"callerid-test-{c}", f"{d}/{c}"],
                               capture_output=True, text=True, timeout=30)
            if r.returncode == 0:
                mounted.append(c)
            else:
                require(c != "freezer", f"a cgroup v1 freezer: this host has none and mounting one failed: "
                                        f"{r.stderr.strip()}")
        yield d
    finally:
        for c in mounted:
            subprocess.run(["umount", f"{d}/{c}"], check=False, timeout=30)
        shutil.rmtree(d, ignore_errors=True)


def cgroup_lines(pid: int) -> dict[str, str]:
    """controller list ("" for cgroup2) -> path, from /proc/<pid>/cgroup."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        out[ctrls] = path
    return out


def procs(d: str) -> set[int]:
    return {int(x) for x in Path(d, "cgroup.procs").read_text().split()}


def v1_jobs(uid: int, node: str, root: str):
    """uid's v1 jobs on node (the v2 hierarchy beside it may hold jobs of the same node name)."""
    return [j for j in jobs_of(uid, node, root) if j.layout == "v1"]


def one_v1_job(trees, v1_root: str):
    """One v1 job, BASE + 1 of UID_A, on this run's node (cg<pid>)."""
    node = f"cg{os.getpid()}"
    trees(node=node, root=v1_root).create(UID_A, BASE + 1)
    (job,) = v1_jobs(UID_A, node, v1_root)
    return job


def only(found, ids):
    return sorted((j for j in found if j.job_id in {str(i) for i in ids}), key=lambda j: int(j.job_id))


# ------------------------------------------------------------------- v1

def test_v1_discovery(v1_root, trees):
    node, other = f"cg{os.getpid()}", f"cgo{os.getpid()}"
    t = trees(node=node, root=v1_root)
    t.create(UID_A, BASE + 1)
    t.create(UID_B, BASE + 2)
    t.create(UID_A, BASE + 3, steps=("batch", "0"))   # no extern step (no PrologFlags=contain)
    trees(node=other, root=v1_root).create(UID_A, BASE + 4)   # another slurmd's node on this host

    found = [j for j in jobs.list_jobs(node, v1_root) if j.layout == "v1"]
    assert sorted((int(j.job_id), j.uid) for j in found) == [(BASE + 1, UID_A), (BASE + 2, UID_B)]
    for j in found:
        assert j.extern == tuple(f"{v1_root}/{c}/slurm_{node}/uid_{j.uid}/job_{j.job_id}/step_extern"
                                 for c in v1_ctrls(v1_root))
        assert j.start > 0
    assert [int(j.job_id) for j in v1_jobs(UID_A, node, v1_root)] == [BASE + 1]
    assert [int(j.job_id) for j in v1_jobs(UID_B, node, v1_root)] == [BASE + 2]
    assert [int(j.job_id) for j in jobs.list_jobs(other, v1_root) if j.layout == "v1"] == [BASE + 4]


def test_v1_forged_job_dir_is_ignored(v1_root, trees):
    node = f"cg{os.getpid()}"
    t = trees(node=node, root=v1_root)
    t.create(UID_A, BASE + 1)
    t.create(UID_A, BASE + 5)
    # Slurm makes job_<id> root-owned; a user-owned one was made by a user (who owned its parent).
    os.chown(f"{v1_root}/freezer/slurm_{node}/uid_{UID_A}/job_{BASE + 5}", UID_A, UID_A)
    assert [int(j.job_id) for j in v1_jobs(UID_A, node, v1_root)] == [BASE + 1]


def test_v1_adopt_moves_process_and_its_future_children(v1_root, trees, children):
    node = f"cg{os.getpid()}"
    t = trees(node=node, root=v1_root)
    t.create(UID_A, BASE + 1)
    t.create(UID_B, BASE + 2)
    (job,) = v1_jobs(UID_A, node, v1_root)
    # A shell that forks a sleep on request: the fork happens after adoption.
    sh = children(["sh", "-c", 'read x; sleep 60 & echo $!; wait'], stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE, text=True)
    assert not pid_in_extern(sh.pid, job)

    assert adopt(sh.pid, job) == list(job.extern)

    assert pid_in_extern(sh.pid, job)
    assert all(sh.pid in procs(d) for d in job.extern)
    want = f"/slurm_{node}/uid_{UID_A}/job_{BASE + 1}/step_extern"
    lines = cgroup_lines(sh.pid)
    assert {c: lines[c] for c in v1_ctrls(v1_root)} == {c: want for c in v1_ctrls(v1_root)}
    ref = job_from_proc_cgroup(Path(f"/proc/{sh.pid}/cgroup").read_text())
    assert (ref.job_id, ref.uid, ref.step, ref.node, ref.controller) == (str(BASE + 1), UID_A, "extern", node,
                                                                          "freezer")
    # The other user's job is untouched.
    (other,) = v1_jobs(UID_B, node, v1_root)
    assert not pid_in_extern(sh.pid, other)

    sh.stdin.write("go\n")
    sh.stdin.flush()
    child = int(sh.stdout.readline())
    try:
        assert {c: cgroup_lines(child)[c] for c in v1_ctrls(v1_root)} == {c: want for c in v1_ctrls(v1_root)}
        assert pid_in_extern(child, job)
    finally:
        os.kill(child, 9)


def test_v1_job_gone_before_first_write(v1_root, trees, children):
    job = one_v1_job(trees, v1_root)
    before = cgroup_lines(os.getpid())
    os.rmdir(job.extern[0])  # the job ends between discovery and adoption
    p = children(["sleep", "60"])
    with pytest.raises(AdoptError) as e:
        adopt(p.pid, job)
    assert (e.value.reason, e.value.written, e.value.errno) == ("job_gone", (), errno.ENOENT)
    assert e.value.path == job.extern[0]
    assert {c: cgroup_lines(p.pid)[c] for c in v1_ctrls(v1_root)} == {c: before[c] for c in v1_ctrls(v1_root)}
    assert not pid_in_extern(p.pid, job)


def test_v1_partial_adoption_is_reported(v1_root, trees, children):
    require(len(v1_ctrls(v1_root)) >= 3, "freezer and two more v1 controllers")
    job = one_v1_job(trees, v1_root)
    os.rmdir(job.extern[2])
    p = children(["sleep", "60"])
    with pytest.raises(AdoptError) as e:
        adopt(p.pid, job)
    assert e.value.reason == "job_gone"
    assert e.value.written == job.extern[:2]
    assert "partial adoption" in str(e.value)
    assert all(p.pid in procs(d) for d in job.extern[:2])


def stop_at(n: int, reason: str = "deadline"):
    """A proceed() for adopt(): go on for n questions, then stop with `reason`."""
    asked = []

    def proceed():
        asked.append(1)
        return reason if len(asked) > n else None
    return proceed


def test_v1_adoption_stopped_between_controllers_is_undone(v1_root, trees, children):
    # Issue 12 item 3: the deadline passes (or the login goes) after some of the job's
    # controllers were written, or after the last write ended too late: nothing more is
    # written and the process is back where it was in every hierarchy. Every stop point.
    require(len(v1_ctrls(v1_root)) >= 3, "freezer and two more v1 controllers")
    job = one_v1_job(trees, v1_root)
    for n in range(1, len(job.extern) + 1):
        p = children(["sleep", "60"])
        before = cgroup_lines(p.pid)
        with pytest.raises(cgroupfs.Stopped) as e:
            adopt(p.pid, job, stop_at(n))
        assert (e.value.reason, e.value.written, e.value.left) == ("deadline", job.extern[:n], ()), n
        assert cgroup_lines(p.pid) == before, f"stopped after {n} writes: moved back in every hierarchy"
        assert not any(p.pid in procs(d) for d in job.extern)
    from tests.reliability import record
    record("kernel/test_cgroupfs.py::v1_adoption_stopped_between_controllers", "fault",
           f"the deadline passes while a process is moved into a v1 job's {len(job.extern)} controllers "
           f"(stopped after each of 1..{len(job.extern)} cgroup.procs writes, the check after the last included)",
           "no write after the stop; the process moved back into the cgroups it was in, in every hierarchy, "
           "each time (Stopped, nothing left)")


def test_v1_stopped_adoption_whose_earlier_cgroup_is_gone_is_left_and_reported(v1_root, trees, children):
    # The undo's one failure: the cgroup the process came from was removed meanwhile (it was
    # empty once the process left it). Those dirs are reported in Stopped.left, the process
    # stays there; every other hierarchy is moved back.
    require(len(v1_ctrls(v1_root)) >= 3, "freezer and two more v1 controllers")
    node = f"cg{os.getpid()}"
    job = one_v1_job(trees, v1_root)
    ctrls = [os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(d)))))
             for d in job.extern]
    origin = {c: f"{v1_root}/{c}/callerid-origin-{os.getpid()}" for c in ctrls}
    p = children(["sleep", "60"])
    try:
        for c, d in origin.items():
            os.mkdir(d)
            if "cpuset" in c.split(","):   # a cpuset cgroup holds tasks once it has cpus and mems
                for f in ("cpuset.cpus", "cpuset.mems"):
                    Path(d, f).write_text(Path(v1_root, c, f).read_text())
            Path(d, "cgroup.procs").write_text(str(p.pid))
        before = cgroup_lines(p.pid)
        asked = []

        def proceed():   # after two writes: their earlier cgroups are removed, then the deadline passes
            asked.append(1)
            if len(asked) <= 2:
                return None
            for c in ctrls[:2]:
                os.rmdir(origin[c])
            return "deadline"
        with pytest.raises(cgroupfs.Stopped) as e:
            adopt(p.pid, job, proceed)
        assert (e.value.written, e.value.left) == (job.extern[:2], job.extern[:2])
        assert "could not move it back" in str(e.value)
        now = cgroup_lines(p.pid)
        for i, c in enumerate(ctrls):
            key = next(k for k in now if set(k.split(",")) == set(c.split(",")))
            assert now[key] == (f"/slurm_{node}/uid_{UID_A}/job_{BASE + 1}/step_extern" if i < 2 else before[key]), c
    finally:
        p.kill()
        p.wait(5)
        for d in origin.values():
            if os.path.isdir(d):
                os.rmdir(d)


def test_v1_adoption_stopped_before_the_first_write_writes_nothing(v1_root, trees, children):
    job = one_v1_job(trees, v1_root)
    p = children(["sleep", "60"])
    before = cgroup_lines(p.pid)
    with pytest.raises(cgroupfs.Stopped) as e:
        adopt(p.pid, job, stop_at(0, "process_changed"))
    assert (e.value.reason, e.value.written, e.value.left) == ("process_changed", (), ())
    assert cgroup_lines(p.pid) == before


def test_a_write_the_kernel_refuses_is_an_io_error_that_says_why(v1_root, trees, children):
    """The refusal made here is the one the running system can make: an empty v1 cpuset
    (ENOSPC) where a v1 cpuset can be mounted (hybrid hosts, Debian 11 and 12), else a v2 leaf
    with a controller enabled for children (EBUSY, "no internal processes") where systemd binds
    cpuset to v2 (Debian 13) and delegates some controller to system.slice."""
    node = f"cg{os.getpid()}"
    if os.path.ismount(f"{v1_root}/cpuset"):
        job = one_v1_job(trees, v1_root)
        refused = next(d for d in job.extern if "/cpuset/" in d)
        Path(refused, "cpuset.cpus").write_text("\n")  # allowed while the cgroup holds no task
        expected, why = errno.ENOSPC, "cpuset.cpus"
    else:
        require_v2()
        delegated = Path(V2, "system.slice", "cgroup.subtree_control").read_text().split()
        require(delegated, f"a v1 cpuset, or a controller enabled in {V2}/system.slice/cgroup.subtree_control")
        t = trees(node=node, layout="v2", v2_mount=V2)
        t.create(UID_A, BASE + 1)
        (job,) = only(jobs.list_jobs(node), {BASE + 1})
        refused = job.extern[0]
        scope = Path(V2, "system.slice", "slurmstepd.scope")
        below = Path(refused).relative_to(scope).parts
        for depth in range(len(below) + 1):   # top-down: each cgroup needs its parent's controllers
            Path(scope, *below[:depth], "cgroup.subtree_control").write_text(f"+{delegated[0]}")
        expected, why = errno.EBUSY, "no-internal-process"
    p = children(["sleep", "60"])
    with pytest.raises(AdoptError) as e:
        adopt(p.pid, job)
    assert (e.value.reason, e.value.errno, e.value.path) == ("io", expected, refused)
    assert why in str(e.value)


# ------------------------------------------------------------------- v2

def test_v2_discovery_and_adopt(trees, children):
    require_v2()
    node = f"cg{os.getpid()}"
    t = trees(node=node, layout="v2", v2_mount=V2)
    ids = {BASE + 6: UID_A, BASE + 7: UID_B, BASE + 8: None}
    for job_id, uid in ids.items():
        t.create(uid or 0, job_id)
        if uid:  # the extern step's process owned by the job's user (22.05's sleep)
            t.popen(["sleep", "60"], uid, uid, job_id, step="extern")

    found = only(jobs.list_jobs(node), ids)
    assert [(int(j.job_id), j.uid, j.layout) for j in found] == [
        (BASE + 6, UID_A, "v2"), (BASE + 7, UID_B, "v2"), (BASE + 8, -1, "v2")]
    for j in found:
        assert j.extern == (f"{V2}/system.slice/slurmstepd.scope/job_{j.job_id}/step_extern/user/task_special",)
    assert [int(j.job_id) for j in only(jobs_of(UID_A, node), ids)] == [BASE + 6]
    assert only(jobs_of(-1, node), ids) == []

    job = found[0]
    sh = children(["sh", "-c", 'read x; sleep 60 & echo $!; wait'], stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE, text=True)
    assert adopt(sh.pid, job) == list(job.extern)
    assert pid_in_extern(sh.pid, job) and sh.pid in procs(job.extern[0])
    ref = job_from_cgroup_path(cgroup_lines(sh.pid)[""], "v2")
    assert (int(ref.job_id), ref.step, ref.layout) == (BASE + 6, "extern", "v2")
    assert cgroup_lines(sh.pid)[""].endswith(f"/job_{BASE + 6}/step_extern/user/task_special")
    # Adopting root's sshd does not change who owns the job.
    assert [j.uid for j in only(jobs.list_jobs(node), {BASE + 6})] == [UID_A]

    sh.stdin.write("go\n")
    sh.stdin.flush()
    child = int(sh.stdout.readline())
    try:
        assert pid_in_extern(child, job)
    finally:
        os.kill(child, 9)


def test_v2_adoption_that_ended_past_its_deadline_is_undone(trees, children):
    require_v2()
    node = f"cg{os.getpid()}"
    t = trees(node=node, layout="v2", v2_mount=V2)
    t.create(UID_A, BASE + 9)
    t.popen(["sleep", "60"], UID_A, UID_A, BASE + 9, step="extern")
    (job,) = only(jobs.list_jobs(node), {BASE + 9})
    p = children(["sleep", "60"])
    before = cgroup_lines(p.pid)
    with pytest.raises(cgroupfs.Stopped) as e:
        adopt(p.pid, job, stop_at(1, "hook_gone"))   # the one write is made, the check after it stops
    assert (e.value.written, e.value.left) == (job.extern, ())
    assert cgroup_lines(p.pid) == before and p.pid not in procs(job.extern[0])


def test_v2_job_gone(trees, children):
    require_v2()
    node = f"cg{os.getpid()}"
    t = trees(node=node, layout="v2", v2_mount=V2)
    t.create(UID_A, BASE + 9)
    (job,) = only(jobs.list_jobs(node), {BASE + 9})
    os.rmdir(job.extern[0])
    p = children(["sleep", "60"])
    with pytest.raises(AdoptError) as e:
        adopt(p.pid, job)
    assert (e.value.reason, e.value.written) == ("job_gone", ())
    assert not pid_in_extern(p.pid, job)
    assert only(jobs.list_jobs(node), {BASE + 9}) == []


def test_v2_sluid_job_under_the_node_prefixed_scope(trees, children):
    """Stock Debian's scope name (<node>_slurmstepd.scope) with Slurm 26.05's SLUID job
    directory, on the real cgroup2 hierarchy: found, owned, adopted into, named back."""
    require_v2()
    node = f"cg{os.getpid()}"
    t = trees(node=node, layout="v2", v2_mount=V2, scope=f"{node}_slurmstepd.scope")
    # a SLUID unique to this run (13 Crockford digits; the pid in the low ones)
    sluid = "s7" + "".join("0123456789ABCDEFGHJKMNPQRSTVWXYZ"[(os.getpid() >> 5 * i) & 31] for i in range(11, -1, -1))
    t.create(UID_A, sluid)
    t.popen(["sleep", "60"], UID_A, UID_A, sluid, step="extern")
    (job,) = [j for j in jobs_of(UID_A, node) if j.job_id == sluid]
    leaf = f"{V2}/system.slice/{node}_slurmstepd.scope/{sluid}/step_extern/user/task_special"
    assert (job.layout, job.extern) == ("v2", (leaf,))
    sh = children(["sleep", "60"])
    assert adopt(sh.pid, job) == [leaf]
    ref = job_from_proc_cgroup(Path(f"/proc/{sh.pid}/cgroup").read_text())
    assert (ref.job_id, ref.step, ref.node) == (sluid, "extern", node)
    assert [j.job_id for j in jobs.list_jobs(f"other{node}") if j.job_id == sluid] == []   # another node's scope


# ------------------------------------------------------------------- no root needed

def test_errno_translation():
    def reason(code):
        return cgroupfs._error(OSError(code, os.strerror(code)), 1, "/x", ()).reason
    assert [reason(c) for c in (errno.ENOENT, errno.ENODEV)] == ["job_gone"] * 2
    assert [reason(c) for c in (errno.EACCES, errno.EPERM)] == ["permission"] * 2
    assert [reason(c) for c in (errno.ENOSPC, errno.ESRCH, errno.EBUSY, errno.EIO)] == ["io"] * 4


def test_adopt_never_creates_and_refuses_pid_zero(tmp_path):
    job = jobs.LocalJob("1", 1000, 0.0, "v1", (str(tmp_path / "gone"),))
    with pytest.raises(ValueError):
        adopt(0, job)
    with pytest.raises(AdoptError) as e:
        adopt(os.getpid(), job)
    assert e.value.reason == "job_gone"
    (tmp_path / "dir").mkdir()
    job2 = jobs.LocalJob("1", 1000, 0.0, "v1", (str(tmp_path / "dir"),))
    with pytest.raises(AdoptError):
        adopt(os.getpid(), job2)
    assert not (tmp_path / "dir" / "cgroup.procs").exists()
    assert not pid_in_extern(os.getpid(), job2)
