"""`callerid conns`: the connection table of this node, like `ss -tnp`, with owners and jobs."""

from __future__ import annotations

import json
import sys

from callerid import config as cfgmod
from callerid.inet import endpoint
from callerid.linux import procfs
from callerid.slurm_cgroup import job_from_proc_cgroup
from callerid.userdb import user_name

from .bpfmap import Connections
from .cookiestore import CookieStore
from .layout import F_RECONCILED, key_tuple
from .probes import pin_dir
from .sockstore import SockStore


def rows(conns: Connections | SockStore | CookieStore, include_closed: bool) -> list[dict]:
    out = []
    own_netns = procfs.own_netns_inode()
    for key, owner in conns.items():
        if owner.closed_ns and not include_closed:
            continue
        src, sport, dst, dport = key_tuple(key)
        job = None
        alive = False
        try:
            info = procfs.proc_info(owner.tgid)
            alive = procfs.same_start(info, owner.birth_ns)
            if alive and info.netns != own_netns:
                continue  # another namespace's connection: not this node's
            if alive:
                ref = job_from_proc_cgroup(info.cgroup_text)
                job = ref.job_id if ref else None
        except procfs.ProcessGone:
            pass
        out.append({
            "state": "closed" if owner.closed_ns else "open",
            "local": endpoint(src, sport), "peer": endpoint(dst, dport),
            "pid": owner.tgid, "uid": owner.uid, "user": user_name(owner.uid),
            "comm": owner.comm.decode(errors="replace"), "job_id": job,
            "owner_alive": alive, "cgroup_id": owner.cgroup_id,
            "origin": "reconcile" if owner.flags & F_RECONCILED else "probe",
        })
    out.sort(key=lambda r: (r["state"], r["local"]))
    return out


def open_pinned_store(path, grace_seconds: float) -> Connections | CookieStore | SockStore | None:
    """The maps of whichever backend pinned them in path, or None if none did.
    `is None`, not truthiness: an idle node's stores are empty, and an empty store is falsy."""
    for open_ in (Connections.open_pinned, lambda p: CookieStore.open_pinned(p, grace_seconds),
                  SockStore.open_pinned):
        store = open_(path)
        if store is not None:
            return store
    return None


def main(args) -> int:
    cfg = cfgmod.load(args.config)
    path = pin_dir(cfg.tracer.pin_root)
    conns = open_pinned_store(path, cfg.tracer.close_grace_seconds)
    if conns is None:
        print(f"callerid conns: no connection maps pinned in {path} (is the tracer running?)", file=sys.stderr)
        return 1
    try:
        table = rows(conns, args.all)
    finally:
        conns.close()
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    hdr = f"{'State':<7}{'Local Address:Port':<42}{'Peer Address:Port':<42}{'Job':>14} {'User':<12}{'Process'}"
    print(hdr)
    for r in table:
        job = str(r["job_id"]) if r["job_id"] else "-"
        proc = f'("{r["comm"]}",pid={r["pid"]})' + ("" if r["owner_alive"] else " exited")
        print(f"{r['state']:<7}{r['local']:<42}{r['peer']:<42}{job:>14} {r['user']:<12}{proc}")
    return 0
