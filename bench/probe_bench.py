"""Probe designs side by side: what each adds per connection, per side, under churn, in memory.

    flock /tmp/callerid-heavy.lock timeout 900 .venv/bin/python3 bench/probe_bench.py [--quick] [--json OUT]

For each backend that loads here (`auto`'s pick first, under the name it picks, then
cookie, sockstore and the tuple-keyed tracepoint design for comparison; kprobe/fentry
with --backends where the kernel has them):

  added_ns        ns added to one loopback connect+accept+close (both sides), as the
                  median of ABBA pairs of short chunks with the programs attached and
                  detached (slow drift in machine load cancels in each pair)
  per side        cookie, sockstore: the accepted side's share is measured on its own by
                  attaching only the programs an accepted socket meets (cookie:
                  sock_release; sockstore: sock_ops and sock_release; no connect4/6, so
                  no socket has a record): both sockets of each connection then behave
                  as accepted ones, half the added time (and of the in-program time) is
                  one accepted socket; the outgoing side is the rest.
                  tuple-keyed designs: one tracepoint program serves both sides, so
                  only the total and the in-program split by run count are reported.
  bpf_stats       kernel.bpf_stats_enabled: runs and in-program ns per connection,
                  per program (a phase of its own: the statistics add a clock read)
  churn           bench/churn_gen.c at its highest rate on this machine while N open
                  connections are held: are all N still attributed afterwards?
  memory          kernel memory per tracked connection (Slab + Percpu delta of N held
                  connections with and without the programs) and per map entry.

Bounded in count and time; loopback only; every program detached and every pin
removed on exit, even on failure.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import connect_accept_close_ns, listener, log, pctl, prog_run_stats  # noqa: E402

CHUNK = 100


def conn_chunk_ns(lsock: socket.socket) -> float:
    """ns per connect+accept+close over one chunk (the client closes first, the ordinary FIN close)."""
    return connect_accept_close_ns(lsock, CHUNK)


# The cgroup-attached designs: their programs, and those an accepted socket meets.
CGROUP_DESIGNS = {
    "sockstore": ("_SOCKSTORE_PROGRAMS", ("callerid_sockops", "callerid_release")),
    "cookie": ("_COOKIE_PROGRAMS", ("callerid_release",)),
}


class Attachment:
    """Attach/detach a loaded backend's programs by group, for ABBA pairs."""

    def __init__(self, probe):
        self.probe = probe
        self.backend = probe.backend
        self._links: dict[str, int] = {}
        self.cgroup = self.backend in CGROUP_DESIGNS
        if self.cgroup:
            from callerid.tracer import probes
            for fd in probe.links:      # take over: we attach and detach by program from here on
                os.close(fd)
            probe.links = ()
            self._link_create = probes._link_create()
            self._cg = os.open(probes.cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
            table, self._passive = CGROUP_DESIGNS[self.backend]
            self._programs = {f: getattr(__import__("bcc").BPFAttachType, a) for f, _, a in getattr(probes, table)}
        self.state = "none" if self.cgroup else "all"

    def groups(self) -> dict[str, tuple]:
        if self.cgroup:
            return {"all": tuple(self._programs), "passive": self._passive, "none": ()}
        return {"all": ("tp",), "none": ()}

    def set(self, state: str):
        if state == self.state:
            return
        want = set(self.groups()[state])
        if self.cgroup:
            for name in list(self._links):
                if name not in want:
                    os.close(self._links.pop(name))
            for name in want:
                if name not in self._links:
                    fd = self.probe.bpf.funcs[name.encode()].fd
                    link = self._link_create(fd, self._cg, self._programs[name], None)
                    if link < 0:
                        raise OSError(ctypes.get_errno(), f"link {name}")
                    self._links[name] = link
        else:
            tp, fn = b"sock:inet_sock_set_state", b"tracepoint__sock__inet_sock_set_state"
            if want:
                self.probe.bpf.attach_tracepoint(tp=tp, fn_name=fn)
            else:
                self.probe.bpf.detach_tracepoint(tp)
        self.state = state

    def close(self):
        if self.cgroup:
            for fd in self._links.values():
                os.close(fd)
            self._links = {}
            os.close(self._cg)


def clear_closed(probe):
    """Empty the closed map between timed chunks (the bench runs no sweeper), so every
    close in a chunk pays a real insert: not a full map's failure, not an LRU eviction.
    cookie: delete the closed records and refill the global closed budget, so every
    close pays its stamp, as within the budget."""
    closed = probe.conns.closed
    if probe.backend == "cookie":
        store = probe.conns
        closed.delete_many([k for k, _, closed_ns in closed.entry_times() if closed_ns])
        for cookie, _, closed_ns in store.slot_times(time.clock_gettime_ns(time.CLOCK_BOOTTIME), store.grace_ns):
            if closed_ns:
                store.forget(cookie)   # as if past its grace: free for the next connects
        table = probe.bpf["budget"]
        table[table.Key(0)] = table.Leaf(0, 0)
        return
    keys = closed.keys()   # a ConnMap method (a snapshot), not a dict's
    closed.delete_many([bytes(k) for k in keys])


def abba(att: Attachment, lsock, on: str, pairs: int, max_s: float) -> dict:
    """Median ns added by attachment state `on` vs nothing attached."""
    with_, without, added = [], [], []
    deadline = time.monotonic() + max_s
    for i in range(pairs):
        if time.monotonic() > deadline:
            break
        clear_closed(att.probe)
        got = {}
        for state in ((on, "none") if i % 2 == 0 else ("none", on)):
            att.set(state)
            got[state] = conn_chunk_ns(lsock)
        with_.append(got[on])
        without.append(got["none"])
        added.append(got[on] - got["none"])
    att.set("all")
    return {"pairs": len(added), "baseline_ns": statistics.median(without), "with_ns": statistics.median(with_),
            "added_ns": statistics.median(added), "added_ns_p25": pctl(added, 25), "added_ns_p75": pctl(added, 75),
            "added_ns_p10_vs_p10": pctl(with_, 10) - pctl(without, 10)}


def bpf_stats(probe, lsock, n: int) -> dict:
    """Runs and in-program ns per connection, per program, with what is attached now."""
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = path.read_text().strip()
    fds = probe.program_fds()
    clear_closed(probe)
    try:
        path.write_text("1")
        s0 = {k: prog_run_stats(fd) for k, fd in fds.items()}
        done = 0
        while done < n:
            conn_chunk_ns(lsock)
            done += CHUNK
        s1 = {k: prog_run_stats(fd) for k, fd in fds.items()}
    finally:
        path.write_text(before)
    out = {}
    for k in fds:
        dt, dc = s1[k][0] - s0[k][0], s1[k][1] - s0[k][1]
        if dc:
            out[k] = {"runs_per_connection": round(dc / done, 2), "ns_per_connection": round(dt / done, 1),
                      "ns_per_run": round(dt / dc, 1)}
    out["total_ns_per_connection"] = round(sum(v["ns_per_connection"] for v in out.values()), 1)
    out["total_runs_per_connection"] = round(sum(v["runs_per_connection"] for k, v in out.items()
                                                 if isinstance(v, dict)), 2)
    return out


def hold(lsock, n: int):
    """n open connections from this process; returns (client sockets, accepted sockets)."""
    cs, ss = [], []
    for _ in range(n):
        c = socket.create_connection(lsock.getsockname())
        cs.append(c)
        ss.append(lsock.accept()[0])
    return cs, ss


def meminfo_kb() -> int:
    total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Slab", "Percpu"):
                total += int(v.split()[0])
    return total


def memory(att: Attachment, probe, n: int) -> dict:
    """Kernel memory per held connection with the programs vs without (median of 3)."""
    per = []
    for _ in range(3):
        deltas = {}
        for state in ("all", "none"):
            att.set(state)
            lsock = listener(n + 16)
            m0 = meminfo_kb()
            cs, ss = hold(lsock, n)
            m1 = meminfo_kb()
            for s in cs + ss:
                s.close()
            lsock.close()
            deltas[state] = (m1 - m0) * 1024 / n
        per.append(deltas["all"] - deltas["none"])
    att.set("all")
    out = {"bytes_per_open_connection": round(statistics.median(per)), "samples": [round(x) for x in per]}
    fdinfo = _map_memlock(probe)
    out["maps_memlock_bytes"] = fdinfo
    return out


def _map_memlock(probe) -> dict:
    from callerid.tracer.bpfmap import fdinfo
    conns = probe.conns
    fds = {"closed": conns.closed.fd} if probe.backend != "cookie" else {"slots": conns.slots.fd,
                                                                        "spill": conns.spill.fd}
    if getattr(conns, "open", None) is not None:
        fds["open"] = conns.open.fd
        fds["pending"] = probe.pending_fd
    out = {}
    for name, fd in fds.items():
        f = fdinfo(fd)
        out[name] = {"memlock": int(f.get("memlock", 0)), "max_entries": int(f["max_entries"])}
    return out


def build_churn_gen(tmp: str) -> str | None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        return None
    exe = os.path.join(tmp, "churn_gen")
    subprocess.run([cc, "-O2", "-o", exe, str(ROOT / "bench" / "churn_gen.c")], check=True)
    return exe


def churn(probe, exe: str | None, held: int, seconds: float) -> dict:
    """The machine's top churn rate while `held` connections stay open; then ask for each."""
    if exe is None:
        return {"error": "no C compiler for bench/churn_gen.c"}
    import resource
    held = min(held, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1000) // 2)   # 2 fds each
    lsock = listener(held + 16)
    cs, ss = hold(lsock, held)
    stats0 = probe.stats()
    try:
        r = subprocess.run([exe, str(seconds), "2", "10000000"], capture_output=True, text=True,
                           timeout=seconds + 20)
        conns = errors = 0
        for line in r.stdout.splitlines():
            _, _, n, e, _ = line.split()
            conns += int(n)
            errors += int(e)
        stats1 = probe.stats()
        found = 0
        t0 = time.perf_counter()
        for c in cs:
            (sh, sp), (dh, dp) = c.getsockname(), c.getpeername()
            owner = probe.conns.find(sh, sp, dh, dp)
            found += owner is not None and owner.tgid == os.getpid() and not owner.closed_ns
        find_us = (time.perf_counter() - t0) / len(cs) * 1e6
    finally:
        for s in cs + ss:
            s.close()
        lsock.close()
    return {"seconds": seconds, "connections": conns, "errors": errors, "per_second": round(conns / seconds),
            "held_open": held, "held_open_still_attributed": found,
            "find_us_per_query_with_held_open": round(find_us, 1),
            "bpf_events": {k: stats1[k] - stats0[k] for k in stats1},
            "note": "the closed map fills (65,536) within the churn: later closes fail their insert or evict"}


def bench_backend(name: str, args, tmp: str, exe: str | None) -> dict:
    from callerid.tracer import probes
    pins = os.path.join(tmp, f"pins-{name}")
    t0 = time.monotonic()
    # A share no one reaches: every close pays its insert, as for a user within their share.
    probe = probes.load(name, pin_root=f"/sys/fs/bpf/callerid-probe-bench-{os.getpid()}-{name}",
                        max_closed=65536, closed_share=1 << 40)
    log(f"{name}: loaded in {time.monotonic() - t0:.2f}s")
    att = Attachment(probe)
    lsock = listener(1024)
    out: dict = {"backend": name, "load_s": round(probe.load_seconds, 2)}
    try:
        for _ in range(20):
            conn_chunk_ns(lsock)   # warm-up
        pairs, max_s = (100, 15) if args.quick else (400, 80)
        out["both_sides"] = abba(att, lsock, "all", pairs, max_s)
        log(f"{name}: added per connection (both sides) {out['both_sides']['added_ns']:.0f} ns")
        if "passive" in att.groups():
            p = abba(att, lsock, "passive", pairs, max_s)
            out["accepted_side_x2"] = p
            out["per_accepted_connection_ns"] = round(p["added_ns"] / 2, 1)
            out["per_outgoing_connection_ns"] = round(out["both_sides"]["added_ns"] - p["added_ns"] / 2, 1)
            log(f"{name}: outgoing {out['per_outgoing_connection_ns']:.0f} ns, "
                f"accepted {out['per_accepted_connection_ns']:.0f} ns")
            # in-program time with only the accepted side's programs: both sockets then act as
            # accepted ones, half of it is one accepted socket's
            att.set("passive")
            ps = bpf_stats(probe, lsock, 5000 if args.quick else 20000)
            out["bpf_stats_accepted_side_x2"] = ps
            out["in_program_ns_per_accepted_connection"] = round(ps["total_ns_per_connection"] / 2, 1)
        att.set("all")
        rounds = [bpf_stats(probe, lsock, 5000 if args.quick else 20000) for _ in range(3)]
        rounds.sort(key=lambda r: r["total_ns_per_connection"])
        out["bpf_stats"] = rounds[1]   # the median of three rounds
        out["bpf_stats_rounds_total_ns"] = [r["total_ns_per_connection"] for r in rounds]
        if "in_program_ns_per_accepted_connection" in out:
            out["in_program_ns_per_outgoing_connection"] = round(
                out["bpf_stats"]["total_ns_per_connection"] - out["in_program_ns_per_accepted_connection"], 1)
        log(f"{name}: in-program {out['bpf_stats']['total_ns_per_connection']} ns in "
            f"{out['bpf_stats']['total_runs_per_connection']} runs per connection")
        out["churn"] = churn(probe, exe, 2000 if args.quick else 10000, 3 if args.quick else 8)
        log(f"{name}: churn {out['churn'].get('per_second')}/s, held open still attributed "
            f"{out['churn'].get('held_open_still_attributed')}/{out['churn'].get('held_open')}")
        out["memory"] = memory(att, probe, 2000 if args.quick else 5000)
        log(f"{name}: memory {out['memory']['bytes_per_open_connection']} B per open connection")
    finally:
        lsock.close()
        att.close()
        probe.close()
        shutil.rmtree(str(probe.pin_dir.parent), ignore_errors=True)
        shutil.rmtree(pins, ignore_errors=True)
    return out


def machine_state() -> dict:
    """Load average and whether a qemu VM runs beside us (wall-clock numbers are noisy then)."""
    r = subprocess.run(["pgrep", "-c", "qemu-system"], capture_output=True, text=True)
    return {"loadavg": open("/proc/loadavg").read().split()[:3], "qemu_running": r.stdout.strip() not in ("", "0"),
            "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


ROWS = (
    # (label, function of one backend's results)
    ("added ns per connect+accept+close, both sides (ABBA median)", lambda r: r["both_sides"]["added_ns"]),
    ("… p10 vs p10", lambda r: r["both_sides"]["added_ns_p10_vs_p10"]),
    ("added ns per outgoing connection (ABBA)", lambda r: r.get("per_outgoing_connection_ns")),
    ("added ns per accepted connection (ABBA)", lambda r: r.get("per_accepted_connection_ns")),
    ("in-program ns per connection, both sides (bpf_stats, median of 3)",
     lambda r: r["bpf_stats"]["total_ns_per_connection"]),
    ("… per outgoing connection", lambda r: r.get("in_program_ns_per_outgoing_connection")),
    ("… per accepted connection", lambda r: r.get("in_program_ns_per_accepted_connection")),
    ("program runs per connection", lambda r: r["bpf_stats"]["total_runs_per_connection"]),
    ("churn, connections/s", lambda r: r["churn"].get("per_second")),
    ("held open still attributed after churn",
     lambda r: f"{r['churn'].get('held_open_still_attributed')}/{r['churn'].get('held_open')}"),
    ("one query (find), µs, with held connections open", lambda r: r["churn"].get("find_us_per_query_with_held_open")),
    ("kernel memory per open connection, bytes (Slab+Percpu delta)",
     lambda r: r["memory"]["bytes_per_open_connection"]),
    ("fixed map memory, MB", lambda r: round(sum(m["memlock"] for m in r["memory"]["maps_memlock_bytes"].values())
                                            / 1e6, 1)),
)


def summary(results: dict) -> str:
    """The backends side by side, as a markdown table."""
    ok = [r for r in results["backends"] if "error" not in r]
    lines = ["| | " + " | ".join(r["backend"] for r in ok) + " |", "| --- |" + " ---: |" * len(ok)]
    for label, get in ROWS:
        cells = []
        for r in ok:
            try:
                v = get(r)
            except (KeyError, TypeError):
                v = None
            cells.append("–" if v is None else (f"{v:,.0f}" if isinstance(v, float) and abs(v) >= 100 else str(v)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for r in results["backends"]:
        if "error" in r:
            lines.append(f"\n{r['backend']}: not measured: {r['error']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--backends", default="auto,cookie,sockstore,tracepoint",
                    help="comma-separated; 'auto' means whatever auto picks (measured under that name)")
    args = ap.parse_args(argv)
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:   # 2 fds per held connection (10,000 in the full run); root may raise the hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, max(hard, 65536)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    from callerid.tracer import probes
    for mnt, kind in (("/sys/fs/bpf", "bpf"), ("/sys/kernel/tracing", "tracefs")):
        if not os.path.ismount(mnt):
            subprocess.run(["mount", "-t", kind, "nodev" if kind == "tracefs" else "bpf", mnt], check=True)
    results = {"kernel": os.uname().release, "auto_order": list(probes.AUTO_ORDER), "backends": [],
               "machine_before": machine_state()}
    tmp = tempfile.mkdtemp(prefix="probe-bench-")
    try:
        exe = build_churn_gen(tmp)
        names = []
        for b in args.backends.split(","):
            if b == "auto":
                p = probes.load("auto", pin_root=f"/sys/fs/bpf/callerid-probe-bench-{os.getpid()}-auto")
                b = p.backend
                p.close()
                shutil.rmtree(str(p.pin_dir.parent), ignore_errors=True)
                results["auto_picks"] = b
                log(f"auto picks {b}")
            if b not in names:
                names.append(b)
        for b in names:
            try:
                results["backends"].append(bench_backend(b, args, tmp, exe))
            except probes.ProbeLoadError as exc:
                results["backends"].append({"backend": b, "error": str(exc)})
        by = {r["backend"]: r for r in results["backends"] if "error" not in r}
        for name in ("cookie", "sockstore"):
            if name in by and "tracepoint" in by:
                s, t = by[name], by["tracepoint"]
                results[f"ratios_{name}_over_tracepoint"] = {
                    "added_ns_both_sides": round(s["both_sides"]["added_ns"] / t["both_sides"]["added_ns"], 3),
                    "in_program_ns": round(s["bpf_stats"]["total_ns_per_connection"]
                                           / t["bpf_stats"]["total_ns_per_connection"], 3),
                }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine_after"] = machine_state()
    results["summary"] = summary(results)
    text = json.dumps(results, indent=2)
    print(text)
    print(f"auto picks {results.get('auto_picks')}; {results['machine_before']} -> {results['machine_after']}\n"
          + results["summary"], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
