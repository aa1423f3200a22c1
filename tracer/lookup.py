"""Answer 'who opened this connection?': BPF map first, sock_diag + /proc as the fallback."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from callerid.linux import procfs, sockdiag
from callerid.protocol import Answer, Query, Source, Status
from callerid.slurm_cgroup import job_from_proc_cgroup

from .bpfmap import Connections
from .layout import make_key

log = logging.getLogger("callerid.tracer.lookup")


@dataclass(frozen=True)
class Outcome:
    """An answer plus what the server needs to authorise and count it."""

    answer: Answer
    owner_uid: int | None      # uid allowed to see the answer besides root/SlurmUser
    fallback_reason: str = ""  # why /proc was consulted ("map_miss", "no_bpf"), "" if it was not
    detail: str = ""           # for logs: why nothing was found


class Resolver:
    def __init__(self, conns: Connections | None, node: str, fallback: bool = True, proc: str = "/proc"):
        self.conns = conns
        self.node = node
        self.fallback = fallback
        self.proc = proc
        self.netns = procfs.own_netns_inode()

    def lookup(self, q: Query) -> Outcome:
        if self.conns is not None:
            owner = self.conns.lookup(make_key(q.src_ip, q.src_port, q.dst_ip, q.dst_port))
            if owner is not None:
                return self._from_map(q, owner)
            reason = "map_miss"
        else:
            reason = "no_bpf"
        if not self.fallback:
            return Outcome(Answer(q, Status.NOT_FOUND, node=self.node), None, "", f"{reason}, fallback disabled")
        return self._from_proc(q, reason)

    def _from_map(self, q: Query, owner) -> Outcome:
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
            return Outcome(Answer(**base, owner_exited=True), owner.uid)
        if info.netns != self.netns:
            # Every tracer on a kernel sees every namespace's connects; answer only for ours.
            return Outcome(Answer(q, Status.NOT_FOUND, node=self.node), None, "", "owner in another netns")
        return Outcome(Answer(**base, **self._job_fields(info)), owner.uid)

    def _from_proc(self, q: Query, reason: str) -> Outcome:
        try:
            socks = sockdiag.find_tcp(q.src_ip, q.src_port, q.dst_ip, q.dst_port)
        except sockdiag.SockDiagError as exc:
            log.warning("sock_diag lookup failed: %s", exc)
            return Outcome(Answer(q, Status.NOT_FOUND, node=self.node), None, reason, f"sock_diag: {exc}")
        for sock in socks:
            pid = procfs.find_pid_for_inode(sock.inode, self.proc) if sock.inode else None
            if pid is None:
                continue
            try:
                info = procfs.proc_info(pid, self.proc)
            except procfs.ProcessGone:
                continue
            ans = Answer(q, Status.FOUND, Source.PROC, pid=info.pid, uid=info.uid, gid=info.gid,
                         birth_ns=info.start_boot_ns, comm=info.comm, node=self.node, **self._job_fields(info))
            return Outcome(ans, info.uid, reason)
        detail = "no such socket" if not socks else "socket held by no process"
        return Outcome(Answer(q, Status.NOT_FOUND, node=self.node), None, reason, detail)

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
