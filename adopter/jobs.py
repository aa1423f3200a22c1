"""The Slurm jobs on this node that have an extern step, read from cgroupfs alone (no slurmctld)."""

from __future__ import annotations

# Layouts (REFERENCE.md "Adoption by slurmstepd", callerid/slurm_cgroup.py):
#   v1  <root>/<ctrl>/slurm_<node>/uid_<uid>/job_<id>/step_extern   (Debian: multiple-slurmd build)
#       <root>/<ctrl>/slurm/uid_<uid>/job_<id>/step_extern          (other builds)
#   v2  <v2>/<...>/[<node>_]slurmstepd.scope/<jobdir>/step_extern/user/task_special
#       <jobdir> is job_<id>, or the job's SLUID in Slurm 26.05.
#
# Only jobs with an extern step are listed: without PrologFlags=contain Slurm makes no
# step_extern and there is nothing to adopt a process into.
#
# Trust. Slurm creates slurm[_<node>], uid_<uid> and job_<id> owned by root, and (v1)
# chowns step_* to the job's user (SchedMD/slurm src/plugins/cgroup/v1/xcgroup.c,
# xcgroup_create_hierarchy; v2: "cgroups in v2 are always owned by root", cgroup_v2.c).
# A user who owns a cgroup directory can mkdir below it (cgroupfs checks only the
# directory's mode), so every directory down to the job directory must be owned by the
# owner of the hierarchy's root, else a user could forge job_<n>/step_extern under a
# step directory or a delegated v2 subtree (user@<uid>.service) and get adopted into it.
#
# Start time ('newest'). cgroupfs (kernfs) directories have no birth time, and their
# mtime is not a creation time: for a directory whose attributes were never set (never
# chown'ed) the kernel reports the time its VFS inode was instantiated, which changes
# when the inode is evicted (e.g. `echo 2 > /proc/sys/vm/drop_caches`); once chown'ed
# (Slurm chowns every directory it makes) the mtime is stable but moves each time a child
# directory is made. The job directory gains a child for every new step, so its mtime
# says "last step started"; step_extern gains children only when the extern step starts
# (v2 user/ and slurm/, v1 task_<n> with jobacct_gather/cgroup), so its mtime is the
# job's start on this node. `start` is the step_extern mtime of the first extern dir.
# (Slurm 22.05's pam_slurm_adopt compares job directory mtimes on v1, highest job id on v2.)
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from callerid.linux import procfs
from callerid.slurm_cgroup import JobRef, job_from_cgroup_path, job_order

DEFAULT_ROOT = "/sys/fs/cgroup"

# v1 controller names the kernel knows (a co-mount's directory joins them with ',').
# Named hierarchies (name=systemd, mounted at <root>/systemd) hold no Slurm cgroups.
V1_CONTROLLERS = frozenset({
    "cpuset", "cpu", "cpuacct", "blkio", "io", "memory", "devices", "freezer", "net_cls",
    "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc",
})
# freezer first: with proctrack/cgroup it is the controller that defines the job's
# processes, and the first write tells "job gone" from a partial adoption. Then the
# task/cgroup controllers, then jobacct_gather/cgroup's, then anything else by name.
_V1_ORDER = ("freezer", "cpuset", "memory", "devices", "cpuacct", "cpu")
V2_SCOPE = "slurmstepd.scope"
V2_SCOPE_MAX_DEPTH = 4  # system.slice/slurmstepd.scope is depth 2; leave room, never walk it all
V2_JOB_MAX_DEPTH = 4    # job/step_N/user/task_N
# Never look below user-delegated v2 subtrees (also refused by slurm_cgroup's parser).
_V2_SKIP = ("user.slice",)
UNKNOWN_UID = -1


@dataclass(frozen=True)
class LocalJob:
    """A job with an extern step on this node, as cgroupfs shows it."""

    job_id: str             # identity as the cgroup names it: "4242", or a SLUID (Slurm 26.05, v2)
    uid: int                # v1: from uid_<uid>; v2: owner of the extern step's processes, or -1
    start: float            # mtime of the (first) step_extern dir, seconds; see module comment
    layout: str             # "v1" | "v2"
    extern: tuple[str, ...] # dirs whose cgroup.procs adoption writes; the first decides "job gone"


# ---------------------------------------------------------------- pure parts


def classify_extern(rel: str, layout: str) -> JobRef | None:
    """The job whose extern step directory is `rel` (path inside one hierarchy), else None.

    v1 `rel` is /slurm[_<node>]/uid_<uid>/job_<id>/step_extern exactly (relative to the
    controller's mount); v2 it is .../[<node>_]slurmstepd.scope/<jobdir>/step_extern/user/task_special.
    Parsing is slurm_cgroup's, so discovery and /proc/<pid>/cgroup agree on what a job is.
    """
    ref = job_from_cgroup_path(rel, layout)
    if ref is None or ref.step != "extern":
        return None
    rest = rel[len(ref.path):]
    if layout == "v1":
        # The root must be the hierarchy's top directory: a slurm_x deeper down is not Slurm's.
        if rest != "/step_extern" or ref.path.count("/") != 3:
            return None
    elif rest != "/step_extern/user/task_special":
        return None
    return ref


def root_node(name: str, layout: str) -> tuple[bool, str | None]:
    """(is a Slurm root, its node) for a v1 root directory or a v2 scope directory name."""
    if layout == "v1":
        if name == "slurm":
            return True, None
        if name.startswith("slurm_") and len(name) > 6:
            return True, name[6:]
        return False, None
    if name == V2_SCOPE:
        return True, None
    if name.endswith("_" + V2_SCOPE) and len(name) > len(V2_SCOPE) + 1:
        return True, name[: -len(V2_SCOPE) - 1]
    return False, None


def own_roots(nodes: Iterable[str | None], nodename: str) -> set[str | None]:
    """Which Slurm roots belong to this node: slurm_<node> (or <node>_slurmstepd.scope) if
    one exists, else the unnamed ones. Another node's named root is never ours: several
    slurmd on one host each have their own."""
    present = set(nodes)
    if nodename in present:
        return {nodename}
    return {None} & present


def v1_controller_order(names: Iterable[str]) -> list[str]:
    """Controller directory names Slurm may use, freezer first; unknown names (systemd,
    unified, anything else) dropped."""
    def rank(name: str) -> tuple[int, str]:
        parts = name.split(",")
        return min(_V1_ORDER.index(p) if p in _V1_ORDER else len(_V1_ORDER) for p in parts), name
    keep = [n for n in names if n and all(p in V1_CONTROLLERS for p in n.split(","))]
    return sorted(set(keep), key=rank)


def choose_owner(uids: Iterable[int]) -> int:
    """The job's owner from the uids of processes in it: the most common non-root uid
    (root holds slurmstepd and adopted sshd [priv] processes), lowest uid on a tie,
    -1 if there is none."""
    counts = Counter(u for u in uids if u > 0)
    if not counts:
        return UNKNOWN_UID
    return min(counts, key=lambda u: (-counts[u], u))


def parse_procs(text: str) -> list[int]:
    """pids from cgroup.procs text (v1 may repeat a pid; order is not guaranteed)."""
    return [int(x) for x in text.split() if x.isdigit()]


# ---------------------------------------------------------------- filesystem

# A directory vanishing while we walk means the job (or step) ended: skip it.
_GONE = (FileNotFoundError, NotADirectoryError)


def is_cgroup2(path: str) -> bool:
    """True if `path` is the root of a cgroup2 hierarchy (v1 hierarchies and the hybrid
    tmpfs at /sys/fs/cgroup have no cgroup.controllers file)."""
    return os.path.isfile(os.path.join(path, "cgroup.controllers")) and not os.path.isfile(
        os.path.join(path, "cgroup.clone_children"))


def default_v2_mount(root: str = DEFAULT_ROOT) -> str:
    return root if is_cgroup2(root) else os.path.join(root, "unified")


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except _GONE:
        return []


def _owner(path: str) -> int | None:
    try:
        return os.stat(path, follow_symlinks=False).st_uid
    except _GONE:
        return None


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except _GONE:
        return None


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:  # gone (ENOENT, ESRCH, ENODEV: cgroup removed between open and read) or hidden
        return None


def _v1_controllers(root: str) -> list[str]:
    """Controller directories under root, co-mount aliases (cpu -> cpu,cpuacct) folded."""
    if is_cgroup2(root):
        return []
    try:
        with os.scandir(root) as it:
            entries = {e.name: e.is_symlink() for e in it if e.is_dir()}
    except _GONE:
        return []
    seen, out = set(), []
    # Real directories before symlinks, so an alias never hides its target's name.
    for name in sorted(v1_controller_order(entries), key=lambda n: entries[n]):
        real = os.path.realpath(os.path.join(root, name))
        if real not in seen:
            seen.add(real)
            out.append(name)
    return v1_controller_order(out)


def _list_v1(nodename: str, root: str) -> list[LocalJob]:
    ctrls = _v1_controllers(root)
    roots_by_ctrl = {c: {} for c in ctrls}  # ctrl -> {root dir name: node}
    for c in ctrls:
        for name in _subdirs(os.path.join(root, c)):
            ok, node = root_node(name, "v1")
            if ok:
                roots_by_ctrl[c][name] = node
    mine = own_roots((n for r in roots_by_ctrl.values() for n in r.values()), nodename)
    found: dict[tuple[int, str], dict[str, str]] = {}  # (uid, job) -> {ctrl: step_extern dir}
    for c in ctrls:
        mount = os.path.join(root, c)
        trusted = _owner(mount)
        for rname, node in roots_by_ctrl[c].items():
            if node not in mine:
                continue
            top = os.path.join(mount, rname)
            if _owner(top) != trusted:
                continue
            for uname in _subdirs(top):
                udir = os.path.join(top, uname)
                for jname in _subdirs(udir):
                    jdir = os.path.join(udir, jname)
                    ext = os.path.join(jdir, "step_extern")
                    ref = classify_extern(f"/{rname}/{uname}/{jname}/step_extern", "v1")
                    if ref is None or not os.path.isdir(ext):
                        continue
                    if _owner(udir) != trusted or _owner(jdir) != trusted:
                        continue  # made by someone else than Slurm: see "Trust" above
                    found.setdefault((ref.uid, ref.job_id), {})[c] = ext
    # With proctrack/cgroup the freezer hierarchy is authoritative: a job is listed only
    # if its freezer step_extern exists. Without a Slurm freezer tree, any controller counts.
    has_freezer = "freezer" in ctrls and any(n in mine for n in roots_by_ctrl["freezer"].values())
    jobs = []
    for (uid, job_id), dirs in found.items():
        if has_freezer and "freezer" not in dirs:
            continue
        extern = tuple(dirs[c] for c in ctrls if c in dirs)
        start = _mtime(extern[0])
        if start is None:
            continue  # ended while we looked
        jobs.append(LocalJob(job_id, uid, start, "v1", extern))
    return jobs


def _find_scopes(v2: str, trusted: int | None) -> list[tuple[str, str | None]]:
    """(path, node) of every [<node>_]slurmstepd.scope at most V2_SCOPE_MAX_DEPTH deep."""
    out, level = [], [v2]
    for _ in range(V2_SCOPE_MAX_DEPTH):
        nxt = []
        for d in level:
            for name in _subdirs(d):
                if name in _V2_SKIP or (name.startswith("user@") and name.endswith(".service")):
                    continue
                path = os.path.join(d, name)
                if _owner(path) != trusted:
                    continue  # delegated subtree: its owner could have made anything below
                ok, node = root_node(name, "v2")
                if ok:
                    out.append((path, node))  # jobs are its children; do not descend
                else:
                    nxt.append(path)
        level = nxt
    return out


def slurm_roots(root: str = DEFAULT_ROOT, v2_mount: str | None = None) -> list[tuple[str, str, str | None]]:
    """(layout, path, node) of every Slurm cgroup root on this host, whatever node it is
    for: v1 slurm[_<node>] under each controller, v2 [<node>_]slurmstepd.scope. For
    `callerid doctor`; the same search as discovery, so both see the same layouts."""
    out: list[tuple[str, str, str | None]] = []
    for c in _v1_controllers(root):
        for name in _subdirs(os.path.join(root, c)):
            ok, node = root_node(name, "v1")
            if ok:
                out.append(("v1", os.path.join(root, c, name), node))
    v2 = v2_mount if v2_mount is not None else default_v2_mount(root)
    if is_cgroup2(v2):
        out += [("v2", path, node) for path, node in _find_scopes(v2, _owner(v2))]
    return out


def _uids_of(pids: Iterable[int], proc: str) -> list[int]:
    uids = []
    for pid in pids:
        text = _read(f"{proc}/{pid}/status")
        if text is None:
            continue  # gone
        try:
            uids.append(procfs.parse_status_ids(text)[0])
        except ValueError:
            continue  # no Uid line: not a process we can count
    return uids


def _procs_below(path: str, depth: int) -> list[int]:
    pids, level = [], [path]
    for _ in range(depth + 1):
        nxt = []
        for d in level:
            text = _read(os.path.join(d, "cgroup.procs"))
            pids += parse_procs(text or "")
            nxt += [os.path.join(d, n) for n in _subdirs(d)]
        level = nxt
    return pids


# Asks Slurm for a v2 job's owner by job id (adopter/stepd.py); None: Slurm could not tell.
OwnerLookup = Callable[[str], "int | None"]


def v2_owner(job_dir: str, proc: str = "/proc", job_id: str | None = None,
             ask_slurm: OwnerLookup | None = None) -> int:
    """Owner uid of a v2 job: what its extern step's slurmstepd says (`ask_slurm`), else the
    user's processes in step_extern/user/task_special (22.05's extern `sleep`), else in any of
    the job's cgroups; -1 if none of them tells. Process owners are only a fallback: on a node
    where a job runs nothing of the user's yet (a multi-node job's other nodes, Slurm 23 and
    later), every process in it is root's."""
    if ask_slurm is not None and job_id is not None:
        uid = ask_slurm(job_id)
        if uid is not None:
            return uid
    leaf = os.path.join(job_dir, "step_extern", "user", "task_special", "cgroup.procs")
    uid = choose_owner(_uids_of(parse_procs(_read(leaf) or ""), proc))
    if uid == UNKNOWN_UID:
        uid = choose_owner(_uids_of(_procs_below(job_dir, V2_JOB_MAX_DEPTH), proc))
    return uid


def _list_v2(nodename: str, v2: str, proc: str, ask_slurm: OwnerLookup | None) -> list[LocalJob]:
    trusted = _owner(v2)
    if trusted is None or not is_cgroup2(v2):
        return []
    scopes = _find_scopes(v2, trusted)
    mine = own_roots((n for _, n in scopes), nodename)
    jobs = []
    for scope, node in scopes:
        if node not in mine:
            continue
        for jname in _subdirs(scope):
            jdir = os.path.join(scope, jname)
            leaf = os.path.join(jdir, "step_extern", "user", "task_special")
            ref = classify_extern("/" + os.path.relpath(leaf, v2), "v2")
            if ref is None or not os.path.isdir(leaf):
                continue
            chain = (jdir, os.path.join(jdir, "step_extern"), os.path.dirname(leaf), leaf)
            if any(_owner(p) != trusted for p in chain):
                continue
            start = _mtime(os.path.join(jdir, "step_extern"))
            if start is None:
                continue
            jobs.append(LocalJob(ref.job_id, v2_owner(jdir, proc, ref.job_id, ask_slurm), start, "v2", (leaf,)))
    return jobs


def list_jobs(nodename: str, root: str = DEFAULT_ROOT, v2_mount: str | None = None,
              proc: str = "/proc", ask_slurm: OwnerLookup | None = None) -> list[LocalJob]:
    """Every job (all users) with an extern step on node `nodename`, oldest first.

    v2 jobs whose owner cannot be determined have uid -1 and never match a user.
    """
    v2 = v2_mount if v2_mount is not None else default_v2_mount(root)
    jobs = _list_v1(nodename, root) + _list_v2(nodename, v2, proc, ask_slurm)
    return sorted(jobs, key=lambda j: (j.start, job_order(j.job_id), j.layout))
