"""Bench phase 2: what the probe `auto` picks adds to a loopback connect+accept+close, paired
attached/detached chunks in ABBA order, plus the time inside the BPF programs from the kernel's
own run-time statistics. (bench/probe_bench.py compares the designs side by side.)"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import time
from pathlib import Path

from bench.common import Cleanup, connect_accept_close_ns, fmt_ns, listener, log, new_pin_root, pctl, prog_run_stats

CHUNK = 100  # connections per attached or detached chunk: short, so machine-load drift within a pair is small

# The probe's programs: one tracepoint program (the only BPF program this bench loads itself).
TRACEPOINTS = ((b"sock:inet_sock_set_state", b"tracepoint__sock__inet_sock_set_state"),)


def conn_loop_ns(lsock: socket.socket, n: int, max_s: float, chunk: int = 250) -> list:
    """ns per connect+accept+close (the accepted side closes first), one value per chunk of
    `chunk` connections, until n connections or max_s seconds."""
    out = []
    start = time.monotonic()
    while len(out) * chunk < n and time.monotonic() - start < max_s:
        out.append(connect_accept_close_ns(lsock, chunk, client_closes_first=False))
    return out


def bpf_program_time(probe, lsock, iters: int, cleanup: Cleanup) -> dict:
    """Time spent inside the BPF programs per connection, from the kernel's own BPF run-time
    statistics (a separate phase: turning the statistics on adds a clock read per run).
    The rest of the added cost is the dispatch (tracepoint: perf event, argument record)."""
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    try:
        fds = probe.program_fds()
        before = path.read_text().strip()
    except (KeyError, OSError, AttributeError) as exc:
        return {"error": f"BPF run-time statistics unavailable: {exc}"}
    restore = cleanup.push(lambda: path.write_text(before), "kernel.bpf_stats_enabled")
    try:
        path.write_text("1")
        s0 = {k: prog_run_stats(fd) for k, fd in fds.items()}
        n = len(conn_loop_ns(lsock, iters, 10, 100)) * 100
        s1 = {k: prog_run_stats(fd) for k, fd in fds.items()}
    finally:
        cleanup.run_one(restore)
    out = {"connections": n}
    ran = []
    for k in fds:
        dt, dc = s1[k][0] - s0[k][0], s1[k][1] - s0[k][1]
        if not dc:
            continue   # loaded but not attached (e.g. a kprobe backend's unused program)
        ran.append(k)
        out[k] = {"runs_per_connection": dc / n, "ns_per_connection": dt / n, "ns_per_run": dt / dc}
    out["ns_per_connection"] = sum(out[k]["ns_per_connection"] for k in ran)
    out["runs_per_connection"] = sum(out[k]["runs_per_connection"] for k in ran)
    return out


def loaded_callerid_programs() -> int | None:
    """BPF tracepoint programs on this kernel named like callerid's (sock__inet_sock,
    tcp__tcp_destro), ours included: another tracer (e.g. tests run by others) adds its own
    cost and noise. None if the kernel's program list cannot be read."""
    import ctypes
    try:
        from bcc import libbcc
        lib = libbcc.lib
        lib.bpf_prog_get_next_id.argtypes = [ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]
        nxt, cur, count = ctypes.c_uint32(0), 0, 0
        for _ in range(100000):
            if lib.bpf_prog_get_next_id(cur, ctypes.byref(nxt)) != 0:
                break
            cur = nxt.value
            fd = lib.bpf_prog_get_fd_by_id(cur)
            if fd < 0:
                continue
            buf, ln = ctypes.create_string_buffer(256), ctypes.c_uint32(256)
            try:
                if lib.bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(ln)) != 0:
                    continue
            finally:
                os.close(fd)
            # struct bpf_prog_info: type at offset 0, name[16] at offset 64
            if int.from_bytes(buf.raw[0:4], "little") == 5 and buf.raw[64:80].split(b"\0")[0] in (
                    b"sock__inet_sock", b"tcp__tcp_destro"):
                count += 1
        return count
    except Exception:  # noqa: BLE001 - informational only
        return None


def bench_probe_cost(args, cleanup: Cleanup) -> dict:
    """ns per loopback connect+accept+close without and with the probe `auto` picks.

    The probe is loaded once; its programs are detached and re-attached between
    short chunks (CHUNK connections, a few ms) in an ABBA order, so slow drifts in machine
    load cancel out in each pair's difference. A detached program costs nothing, the
    same as no probe; a never-loaded baseline is measured before and after as a check."""
    from bench.probe_bench import Attachment, clear_closed
    from callerid.tracer import probes

    chunk, pairs = CHUNK, (150 if args.quick else 500)
    pin_root = new_pin_root()
    cleanup.push(lambda: shutil.rmtree(pin_root, ignore_errors=True), f"pins {pin_root}")
    lsock = listener(512)
    cleanup.push(lsock.close, "probe-cost listener")
    conn_loop_ns(lsock, 2000, 5, chunk)  # warm-up
    unloaded = conn_loop_ns(lsock, 10 * chunk, 10, chunk)
    log(f"probe cost: no probe loaded: {fmt_ns(statistics.median(unloaded))} per connection")
    # a share no one reaches: every close pays its work, as for a user within their share
    probe = probes.load("auto", pin_root=pin_root, closed_share=1 << 40)
    cleanup.push(probe.close, "in-process probe")
    att = Attachment(probe)
    detach = cleanup.push(att.close, "probe attachments")
    log(f"probe cost: auto picked {probe.backend}")
    load_s = probe.load_seconds
    stats0 = probe.stats()

    def set_attached(want: bool):
        att.set("all" if want else "none")

    with_probe, without, added = [], [], []
    loaded = loaded_callerid_programs()  # ours is loaded and attached now: one program per TRACEPOINTS entry
    other_progs = None if loaded is None else max(0, loaded - len(TRACEPOINTS))
    if other_progs:
        log(f"probe cost: note: {other_progs} other callerid-like BPF programs are loaded on this kernel")
    try:
        deadline = time.monotonic() + (30 if args.quick else 90)
        for i in range(pairs):
            if time.monotonic() > deadline:
                break
            order = (True, False) if i % 2 == 0 else (False, True)  # ABBA
            clear_closed(probe)   # no sweeper runs here: keep the closed records from filling up
            got = {}
            for want in order:
                set_attached(want)
                got[want] = conn_loop_ns(lsock, chunk, 5, chunk)[0]
            with_probe.append(got[True])
            without.append(got[False])
            added.append(got[True] - got[False])
        set_attached(True)
        stats1 = probe.stats()
        prog_time = bpf_program_time(probe, lsock, 50 * chunk, cleanup)
    finally:
        cleanup.run_one(detach)   # the links hold the programs attached: close them first
        cleanup.run_one(probe.close)
    unloaded2 = conn_loop_ns(lsock, 10 * chunk, 10, chunk)
    cleanup.run_one(lsock.close)
    n_attached = len(with_probe) * chunk
    # records written per attached connection (tuple-keyed: established entries; cookie,
    # sockstore: owners captured at connect)
    est = stats1["established"] - stats0["established"] or stats1["connect"] - stats0["connect"]
    log(f"probe cost: {len(added)} pairs, added p50 {fmt_ns(statistics.median(added))}")
    return {
        "backend": probe.backend, "chunk": chunk, "pairs": len(added), "probe_load_s": load_s,
        "baseline_ns": statistics.median(without), "with_probe_ns": statistics.median(with_probe),
        "never_loaded_ns_before": statistics.median(unloaded), "never_loaded_ns_after": statistics.median(unloaded2),
        "added_ns": statistics.median(added), "added_ns_p25": pctl(added, 25), "added_ns_p75": pctl(added, 75),
        "added_ns_min": min(added), "added_ns_max": max(added),
        "map_entries_per_attached_connection": est / n_attached if n_attached else None,
        # Interference (other work on the 2 cores) only ever adds time: the least disturbed
        # chunks, the 10th percentiles, give a second estimate that noise cannot inflate.
        "added_ns_p10_vs_p10": pctl(with_probe, 10) - pctl(without, 10),
        "bpf_program": prog_time, "other_callerid_programs_loaded": other_progs,
    }
