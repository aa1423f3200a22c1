"""Start-up reconcile: put connections that existed before the probe into the map."""

from __future__ import annotations

import logging
import os
import time

from callerid.linux import procfs, sockdiag

from .bpfmap import Connections
from .cookiestore import CookieStore
from .layout import F_RECONCILED, Owner
from .sockstore import SockStore

log = logging.getLogger("callerid.tracer.reconcile")


def cgroup2_id(cgroup_text: str, mount: str = "/sys/fs/cgroup/unified") -> int:
    """The v2 cgroup id (its directory's inode on the cgroup2 mount), 0 if unknown."""
    for line in cgroup_text.splitlines():
        hier, ctrls, path = line.split(":", 2)
        if hier == "0" and ctrls == "":
            for root in (mount, "/sys/fs/cgroup"):
                try:
                    return os.stat(root + path).st_ino
                except OSError:
                    continue
    return 0


def owner_from_proc(info: procfs.ProcInfo) -> Owner:
    o = Owner()
    o.tgid = o.tid = info.pid
    o.uid, o.gid = info.uid, info.gid
    o.cgroup_id = cgroup2_id(info.cgroup_text)
    # The connection is younger than its process: the start time keeps the
    # pid-reuse guard (start <= birth) true for this process and false for a successor.
    o.birth_ns = info.start_boot_ns
    o.flags = F_RECONCILED
    o.comm = info.comm.encode()[:15]
    return o


def reconcile(conns: Connections | SockStore | CookieStore) -> int:
    """Insert every established outgoing connection that is not in the map yet.

    Accepted connections (local port is a listening port) are skipped: only the
    connecting side is ever asked about. Existing entries are never overwritten:
    the probe's data is fresher than anything read from /proc.
    """
    start = time.perf_counter()
    listening = sockdiag.listening_ports()
    socks = [s for s in sockdiag.list_tcp() if s.sport not in listening and s.inode]
    pids = procfs.pids_by_socket_inode({s.inode for s in socks})
    inserted = 0
    infos: dict[int, procfs.ProcInfo | None] = {}
    for s in socks:
        holders = pids.get(s.inode)
        if not holders:
            continue
        pid = holders[0]
        if pid not in infos:
            try:
                infos[pid] = procfs.proc_info(pid)
            except procfs.ProcessGone:
                infos[pid] = None
        info = infos[pid]
        if info is None:
            continue
        if conns.record_existing(s, pid, owner_from_proc(info)):
            inserted += 1
    log.info("reconcile: %d established outgoing connections, %d added to the map in %.3fs",
             len(socks), inserted, time.perf_counter() - start)
    return inserted
