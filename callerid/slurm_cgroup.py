"""Which Slurm job a process is in, parsed from the text of /proc/<pid>/cgroup (pure, no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Layouts Slurm creates (REFERENCE.md, "Adoption by slurmstepd"):
#   v1: <ctrl>:/slurm[_<node>]/uid_<uid>/job_<id>/step_<step>[/task_<n>]
#       (the Debian build names the root slurm_<nodename>; see LAB-NOTES.md)
#   v2: 0::/<slice>.slice/[<node>_]slurmstepd.scope/<jobdir>/step_<step>/{slurm,user/task_<n>}
#       The node prefix appears with --enable-multiple-slurmd (doc/html/cgroup_v2.shtml);
#       the scope also holds "system" (slurmstepd infinity) and, for a hand-started
#       slurmd, "slurmd": neither is a job.
#
# Slurm 26.05 names the v2 job directory by the job's SLUID, bare, without "job_"
# (e.g. ".../slurmstepd.scope/sEKNKTV3WPV500/"), unless cgroup.conf has
# CgroupJobIdPaths=yes (https://slurm.schedmd.com/cgroup.conf.html, CgroupJobIdPaths;
# 26.05 CHANGELOG). A SLUID is "s" + 13 Crockford base32 digits
# (alphabet 0-9A-Z without I, L, O, U), 14 characters, upper case as written by
# sluid2str() in SchedMD/slurm src/common/sluid.c; its own unit test maps
# 0xbc064b4483ea1000 to "sBR1JB8J1YM400". The 64 bits are cluster id (12 bits, top),
# milliseconds (42) and a sequence number (10, generate_sluid()): the numeric job id is
# not in it. "job_<SLUID>" is also accepted, in case a release spells it that way;
# nothing documents it.
#
# So a job's identity here is a string, the one its cgroup directory names: the decimal
# job id ("4242") or the SLUID ("sBR1JB8J1YM400"). Discovery, the RPC answer, the policy
# and the logs all carry that string; a job is the same job only if the strings are equal.
_V1_ROOT = re.compile(r"slurm(?:_(.+))?", re.ASCII)
_V1_UID = re.compile(r"uid_([0-9]+)", re.ASCII)
_V1_JOB = re.compile(r"job_([0-9]+)", re.ASCII)
_V2_SCOPE = re.compile(r"(?:(.+)_)?slurmstepd\.scope", re.ASCII)
_SLUID = r"s[0-9A-HJKMNP-TV-Z]{13}"
_V2_JOB = re.compile(rf"job_([0-9]+)|(?:job_)?({_SLUID})", re.ASCII)
# A job identity as the wire and the logs carry it: a job id in canonical decimal
# (Slurm job ids are 32-bit and never 0), or a SLUID.
_JOB_IDENTITY = re.compile(rf"[1-9][0-9]{{0,9}}|{_SLUID}", re.ASCII)
_MAX_JOB_ID = 2 ** 32 - 1
# systemd delegates user@<uid>.service (v2, and name=systemd on hybrid v1) to the user,
# who can then mkdir a look-alike ".../slurmstepd.scope/job_42" there: never trust a
# Slurm-looking path below these.
_USER_DELEGATED = re.compile(r"user\.slice|user@[0-9]+\.service", re.ASCII)


@dataclass(frozen=True)
class JobRef:
    """A process's Slurm job, as its cgroup path names it."""

    job_id: str  # the job's identity: decimal job id, or the SLUID of a Slurm 26.05 v2 job directory
    uid: int | None  # v1 only; v2 paths carry no uid
    step: str | None  # "extern", "batch", "interactive", "0", ...; None at job level
    node: str | None  # from slurm_<node> (v1) or <node>_slurmstepd.scope (v2)
    layout: str  # "v1" or "v2"
    controller: str | None  # the v1 controller list of the line ("freezer", "cpu,cpuacct")
    path: str  # the cgroup path up to and including the job directory


def is_job_identity(text: str) -> bool:
    """True for a canonical job identity: decimal job id (no leading zero) or a SLUID."""
    return bool(_JOB_IDENTITY.fullmatch(text)) and (text[0] == "s" or int(text) <= _MAX_JOB_ID)


def job_order(job: str) -> tuple[int, int, str]:
    """Sort key, older first: job ids by number, SLUIDs by their text, which is their
    creation order (fixed width, Crockford digits in ASCII order, time in the high bits
    under the cluster id). One node's jobs are all of one kind (CgroupJobIdPaths);
    numeric ids sort before SLUIDs if they ever meet."""
    if job.isdigit():
        return 0, int(job), ""
    return 1, 0, job


def _canonical_id(digits: str) -> str:
    return str(int(digits))


def v2_job_identity(name: str) -> str | None:
    """The job a v2 job directory name stands for (job_<id>, <SLUID>, job_<SLUID>), else None."""
    job = _V2_JOB.fullmatch(name)
    if not job:
        return None
    ident = _canonical_id(job[1]) if job[1] else job[2]
    return ident if is_job_identity(ident) else None


def _step(parts: list[str], job_index: int) -> str | None:
    nxt = parts[job_index + 1] if job_index + 1 < len(parts) else ""
    return nxt[5:] if nxt.startswith("step_") and len(nxt) > 5 else None


def job_from_cgroup_path(path: str, layout: str = "v2", controller: str | None = None) -> JobRef | None:
    """Parse one cgroup path of hierarchy `layout` ("v1" or "v2"); None if it is no Slurm job."""
    if layout not in ("v1", "v2"):
        raise ValueError(f"layout must be 'v1' or 'v2', not {layout!r}")
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _USER_DELEGATED.fullmatch(part):
            return None
        if layout == "v1":
            root = _V1_ROOT.fullmatch(part)
            if not root or i + 2 >= len(parts):
                continue
            uid, job = _V1_UID.fullmatch(parts[i + 1]), _V1_JOB.fullmatch(parts[i + 2])
            if uid and job and is_job_identity(_canonical_id(job[1])):
                return JobRef(_canonical_id(job[1]), int(uid[1]), _step(parts, i + 2), root[1], "v1",
                              controller, "/".join(parts[: i + 3]))
        else:
            scope = _V2_SCOPE.fullmatch(part)
            job = v2_job_identity(parts[i + 1]) if scope and i + 1 < len(parts) else None
            if job:
                return JobRef(job, None, _step(parts, i + 1), scope[1], "v2", None, "/".join(parts[: i + 2]))
    return None


def job_from_proc_cgroup(text: str) -> JobRef | None:
    """The job named by /proc/<pid>/cgroup text: freezer first, then any v1 controller, then v2."""
    best, best_rank = None, 3
    for line in text.splitlines():
        # "hierarchy-id:controller-list:path"; the path itself may contain ':'.
        hid, sep1, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep1 and sep2 and path.startswith("/")):
            continue
        if hid == "0" and controllers == "":
            rank, ref = 2, job_from_cgroup_path(path, "v2")
        else:
            names = controllers.split(",")
            # Named hierarchies (name=systemd) hold no Slurm cgroups and can be user-writable.
            if not controllers or any(n.startswith("name=") for n in names):
                continue
            rank = 0 if "freezer" in names else 1
            ref = job_from_cgroup_path(path, "v1", controllers)
        if ref is not None and rank < best_rank:
            best, best_rank = ref, rank
    return best
