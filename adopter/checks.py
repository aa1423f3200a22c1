"""The adopter's findings for `callerid doctor`: which Slurm cgroup layouts are on this host.

The CLI passes check_slurm_layout to callerid.doctor, so the core never imports the adopter.
It searches with discovery's own code (jobs.slurm_roots), so doctor and the adopter see the
same layouts: v1 slurm[_<node>], v2 [<node>_]slurmstepd.scope with job_<id> or SLUID jobs."""

from __future__ import annotations

import os

from callerid.doctor import Check
from callerid.slurm_cgroup import v2_job_identity

from .jobs import own_roots, slurm_roots


def describe_root(layout: str, path: str) -> str:
    """One Slurm cgroup root in words: its layout and how it names job directories."""
    if layout == "v1":
        return f"v1 {path}"
    try:
        names = {"SLUID" if job.startswith("s") else "job id"
                 for job in map(v2_job_identity, os.listdir(path)) if job}
    except OSError:
        names = set()
    how = f" (jobs named by {' and '.join(sorted(names))})" if names else ""
    return f"v2 {path}{how}"


def check_slurm_layout(cgroup_root: str, node: str) -> list[Check]:
    """Which Slurm cgroup layouts are here (v1 slurm[_<node>], v2 [<node>_]slurmstepd.scope
    with job_<id> or SLUID job directories), and whether one is this node's."""
    roots = slurm_roots(cgroup_root)
    if not roots:
        return [Check("slurm cgroup layout", "warn",
                      "no slurm*/ (v1) or [<node>_]slurmstepd.scope (v2) found (no job has run here yet?)",
                      "needs ProctrackType=proctrack/cgroup and PrologFlags=contain")]
    mine = own_roots((n for _, _, n in roots), node)
    found = [describe_root(layout, path) + ("" if n in mine else f" (node {n}, not {node})")
             for layout, path, n in sorted(roots)]
    if not any(n in mine for _, _, n in roots):
        return [Check("slurm cgroup layout", "fail", "; ".join(found[:6]),
                      f"none is this node's: set nodename in callerid.toml [common] to the Slurm NodeName "
                      f"(now {node!r})")]
    return [Check("slurm cgroup layout", "ok", "; ".join(found[:6]))]
