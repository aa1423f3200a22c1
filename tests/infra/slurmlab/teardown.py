"""Removing a lab: everything its state file lists, from any process, after a failed `up` too.

A mixin of SlurmLab."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import time
from pathlib import Path

from .. import netns
from . import cgroups, network
from .procctl import (
    cmdline,
    descendants,
    netns_inode,
    pids_in_netns,
    same_proc,
    stepds,
    terminate,
)


class Teardown:
    def _cgroup_tops(self) -> list[Path]:
        """The Slurm cgroup trees of this lab's nodes (state of a lab from before the v2 support: v1 names)."""
        st = self.state
        if "cgroup_tops" in st:
            return [Path(p) for p in st["cgroup_tops"]]
        host = cgroups.host_cgroups()
        return [p for node in st.get("cgroup_nodes") or [] for p in cgroups.slurm_tops(node, host)]

    def down(self, timeout: float = 30.0) -> list[str]:
        """Remove everything the state file lists. Safe to call twice, after a failed up, from any process."""
        t0 = time.monotonic()
        notes: list[str] = []
        st = self.state  # only what this object made or load() read: never another lab's
        for p in self._children:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    notes.append(f"pid {p.pid} (started by popen) did not die")
        self._children.clear()
        procs = [r for r in st.get("procs", []) if same_proc(r)]
        tops = self._cgroup_tops()

        # 1. jobs: cancel them while Slurm still runs, so slurmstepd ends them and removes their cgroups
        if any(r["name"] == "slurmctld" for r in procs) and Path(st.get("slurm_conf", self.conf)).exists():
            try:
                jobs = self.jobs()
                if jobs:
                    self.run(self.ctl, ["scancel", *map(str, jobs)], timeout=20)
                    end = time.monotonic() + min(15.0, timeout / 2)
                    while time.monotonic() < end and self.jobs():
                        time.sleep(0.2)
            except (subprocess.TimeoutExpired, OSError) as exc:
                notes.append(f"cancelling jobs: {exc}")

        # 2. what else must go: descendants of our daemons, processes in the lab's job cgroups,
        #    slurmstepd processes in the lab's namespaces (they outlive slurmd)
        ours = {r["pid"] for r in procs}
        victims = descendants(ours) | cgroups.tree_pids(tops) | stepds(st.get("netns", []))
        victims -= ours
        victims.discard(os.getpid())

        # 3. daemons by pid (munged last: the others may still talk to it)
        terminate([r["pid"] for r in procs if r["name"] != "munged"], 5.0)
        terminate(sorted(victims), 3.0)
        late = cgroups.tree_pids(tops) - {os.getpid()}
        if late:
            terminate(sorted(late), 2.0)
        terminate([r["pid"] for r in procs if r["name"] == "munged"], 5.0)
        for p in self._popens.values():
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        self._popens.clear()

        # 4. cgroups Slurm made for the lab's nodes, then the ones the lab made for slurmd (v2)
        for top in [*tops, *(Path(d) for d in st.get("cgroup_dirs", []))]:
            if top.is_dir() and not cgroups.rm_tree(top, time.monotonic() + 5):
                notes.append(f"left {top}: not empty (pids {sorted(cgroups.tree_pids([top], jobs_only=False))[:5]})")

        # 5. namespaces (deleting a namespace removes its veths; the bridge goes with the hub)
        for ns in reversed(st.get("netns", [])):
            inode = netns_inode(ns)
            if inode is not None:
                left = pids_in_netns(inode)
                if left:
                    notes.append(f"processes still in {ns} (not started by the lab, left alone): "
                                 + ", ".join(f"{p} {cmdline(p)[:40]}" for p in sorted(left)[:5]))
                netns.del_netns(ns)

        # 6. files: PAM services, profile.d snippet, our /dev/log
        for f in st.get("files", []):
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass
        dl = st.get("devlog")
        if dl:
            try:
                s = os.lstat(dl["path"])
                if stat.S_ISSOCK(s.st_mode) and s.st_ino == dl["ino"]:
                    os.unlink(dl["path"])
            except FileNotFoundError:
                pass

        # 7. users (homes live under the lab directory)
        for name in st.get("users", []):
            try:
                pwd.getpwnam(name)
            except KeyError:
                continue
            r = subprocess.run(["userdel", "--force", name], capture_output=True, text=True, timeout=30)
            if r.returncode not in (0, 6):
                notes.append(f"userdel {name}: {r.stderr.strip()}")

        # 8. directories: pinned maps, the lab directory (state file last); job_container/tmpfs
        #    mounts a job's /tmp and pins its namespace under <root>/jc: a killed slurmd leaves them
        for mp in sorted(_mounts_under(self.root), reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True, timeout=10)
        for d in reversed(st.get("dirs", [])):
            if d != str(self.root):
                shutil.rmtree(d, ignore_errors=True)
        if str(self.root) in st.get("dirs", []) and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        self.timings["down"] = time.monotonic() - t0
        self.state = self._empty_state()
        for n in notes:
            self._log(f"down: {n}")
        self._log(f"lab down in {self.timings['down']:.1f}s")
        return notes

    @staticmethod
    def down_without_state(root: Path, log) -> None:
        """Leftovers with no state file (killed before it was written): names only the lab uses."""
        for name in network.lab_namespaces():
            log(f"removing leftover namespace {name}")
            netns.del_netns(name)
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)


def _mounts_under(root: Path) -> list[str]:
    """Mount points strictly below root (from /proc/self/mountinfo; octal escapes decoded)."""
    prefix = str(root).rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp.startswith(prefix):
                out.append(mp)
    return out
