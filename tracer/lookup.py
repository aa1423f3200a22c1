"""Answer 'who opened this connection?': BPF map first, sock_diag + /proc as the fallback."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from callerid.linux import procfs, sockdiag
from callerid.protocol import Answer, Query, Source, Status
from callerid.slurm_cgroup import job_from_proc_cgroup

from .bpfmap import Connections

log = logging.getLogger("callerid.tracer.lookup")


# The /proc fallback walks every process's fds: hundreds of ms on a busy node. One scan
# at a time, each within this budget, so no caller can make the tracer do more.
SCAN_BUDGET_SECONDS = 0.5
SCAN_RESULTS = ("found", "not_found", "budget_exceeded", "busy")


def _anyone(owner_uid: int | None) -> bool:
    return True


@dataclass(frozen=True)
class Outcome:
    """An answer plus what the server needs to authorise and count it."""

    answer: Answer
    owner_uid: int | None      # uid allowed to see the answer besides root/SlurmUser
    fallback_reason: str = ""  # why /proc was consulted ("map_miss", "no_bpf"), "" if it was not
    detail: str = ""           # for logs: why nothing was found
    denied: bool = False       # the socket exists but is not the requester's: not-found, no scan
    scan: str = ""             # how a /proc scan ended (SCAN_RESULTS), "" if none ran


class Resolver:
    def __init__(self, conns: Connections | None, node: str, fallback: bool = True, proc: str = "/proc",
                 scan_budget: float = SCAN_BUDGET_SECONDS):
        self.conns = conns
        self.node = node
        self.fallback = fallback
        self.proc = proc
        self.scan_budget = scan_budget
        self._scan_lock = threading.Lock()
        self.netns = procfs.own_netns_inode()

    def lookup(self, q: Query, allowed: Callable[[int | None], bool] = _anyone) -> Outcome:
        """allowed(owner uid): may the requester see this connection's owner? Asked before
        the /proc scan, with the uid sock_diag reports, so that a stranger's question costs
        what a question about a missing socket costs and tells nothing more."""
        reason = "no_bpf"
        if self.conns is not None:
            owner = self.conns.find(q.src_ip, q.src_port, q.dst_ip, q.dst_port)
            found = self._from_map(q, owner) if owner is not None else None
            if found is not None:
                return found
            reason = "map_miss"   # no entry, or one that is not this namespace's connection
        if not self.fallback:
            return Outcome(Answer(q, Status.NOT_FOUND, node=self.node), None, "", f"{reason}, fallback disabled")
        return self._from_proc(q, reason, allowed)

    def _from_map(self, q: Query, owner) -> Outcome | None:
        """The answer from the map's owner, or None when that owner is not this
        namespace's: every tracer on a kernel sees every namespace's connects, and a
        tuple-keyed map holds one owner per tuple for all namespaces together. The
        caller then asks sock_diag + /proc, which see only our namespace."""
        closed = owner.closed_ns != 0
        base = dict(query=q, status=Status.FOUND, source=Source.BPF, closed=closed, pid=owner.tgid,
                    uid=owner.uid, gid=owner.gid, cgroup_id=owner.cgroup_id, birth_ns=owner.birth_ns,
                    comm=owner.comm.decode(errors="replace"), node=self.node)
        try:
            info = procfs.proc_info(owner.tgid, self.proc, ids=False)  # ids come from the probe
        except procfs.ProcessGone:
            info = None
        if info is None or not procfs.same_start(info, owner.birth_ns):
            # The pid is gone or now names a younger process: never report that one.
            # Its namespace is unknown now; owner_exited only where it cannot be another's.
            if not self._exited_owner_may_be_ours(q):
                return None
            return Outcome(Answer(**base, owner_exited=True), owner.uid)
        if info.netns != self.netns:
            return None
        return Outcome(Answer(**base, **self._job_fields(info)), owner.uid)

    def _exited_owner_may_be_ours(self, q: Query) -> bool:
        """The sockstore's records are ours by construction (socket storage read through
        our sock_diag, closed records keyed by our netns cookie). A tuple-keyed map's
        are not: if our namespace has a live socket for the tuple, an exited owner is
        not its owner (another namespace's entry overwrote ours), and /proc must answer.
        With no live socket here the entry may still be another namespace's closed
        connection: that is the tuple-keyed backends' documented limit."""
        if getattr(self.conns, "namespace_exact", False):
            return True
        try:
            socks = sockdiag.find_tcp(q.src_ip, q.src_port, q.dst_ip, q.dst_port)
        except sockdiag.SockDiagError:
            return True
        return not any(s.state not in (sockdiag.TCP_TIME_WAIT, sockdiag.TCP_CLOSE) for s in socks)

    def _from_proc(self, q: Query, reason: str, allowed: Callable[[int | None], bool]) -> Outcome:
        not_found = Answer(q, Status.NOT_FOUND, node=self.node)
        try:
            socks = sockdiag.find_tcp(q.src_ip, q.src_port, q.dst_ip, q.dst_port)
        except sockdiag.SockDiagError as exc:
            log.warning("sock_diag lookup failed: %s", exc)
            return Outcome(not_found, None, reason, f"sock_diag: {exc}")
        mine = [s for s in socks if s.inode and allowed(s.uid)]
        if socks and not mine:
            return Outcome(not_found, socks[0].uid, reason, "socket of another uid: no scan", denied=True)
        if not mine:
            return Outcome(not_found, None, reason, "no such socket" if not socks else "socket held by no process")
        start = time.monotonic()
        if not self._scan_lock.acquire(timeout=self.scan_budget):
            return Outcome(not_found, None, reason, "another /proc scan is running", scan="busy")
        try:
            pids = [procfs.find_pid_for_inode(s.inode, self.proc, start + self.scan_budget) for s in mine]
        except procfs.ScanTimeout as exc:
            return Outcome(not_found, None, reason, str(exc), scan="budget_exceeded")
        finally:
            self._scan_lock.release()
        for pid in pids:
            if pid is None:
                continue
            try:
                info = procfs.proc_info(pid, self.proc)
            except procfs.ProcessGone:
                continue
            ans = Answer(q, Status.FOUND, Source.PROC, pid=info.pid, uid=info.uid, gid=info.gid,
                         birth_ns=info.start_boot_ns, comm=info.comm, node=self.node, **self._job_fields(info))
            return Outcome(ans, info.uid, reason, scan="found")
        return Outcome(not_found, None, reason, "socket held by no process", scan="not_found")

    @staticmethod
    def _job_fields(info) -> dict:
        job = job_from_proc_cgroup(info.cgroup_text)
        if job is None:
            return {"cgroup": _first_cgroup(info.cgroup_text)}
        return {"job_id": job.job_id, "cgroup": job.path}


def _first_cgroup(text: str) -> str:
    """A readable cgroup for non-job owners: freezer (v1) or the unified path."""
    best = ""
    for line in text.splitlines():
        _, ctrls, path = line.split(":", 2)
        if "freezer" in ctrls.split(","):
            return path
        if ctrls == "" and not best:
            best = path
    return best
