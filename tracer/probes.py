"""Compile bpf/callerid.bpf.c with BCC for one probe backend, attach it, and prove it works.

Backends differ only in step 1 (where the connection's owner is captured):
  tracepoint  sock:inet_sock_set_state CLOSE->SYN_SENT (works everywhere with tracepoints)
  kprobe      kprobe on tcp_connect            (needs CONFIG_KPROBES)
  fentry      fentry on tcp_connect            (needs BPF trampolines; EPERM on some VMs)
Selection is by trying, not by trusting feature probes: BCC's support_kfunc()
says yes on kernels where fentry loads fail. Each loaded backend must pass a
self-test (a loopback connection that must appear in the map with our pid)
before it is accepted.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .bpfmap import BPF_MAP_TYPE_LRU_HASH, Connections, ConnMap, MapInfo, PinnedMapMismatch, check_pinned
from .layout import LAYOUT_VERSION, STAT_NAMES, ConnKey, Owner, bpf_dir, make_key

log = logging.getLogger("callerid.tracer.probes")

BACKENDS = ("fentry", "kprobe", "tracepoint")
AUTO_ORDER = ("fentry", "kprobe", "tracepoint")
DEFAULT_PIN_ROOT = "/sys/fs/bpf/callerid"


class ProbeLoadError(RuntimeError):
    """A backend could not be compiled, loaded, attached, or failed its self-test."""


def pin_dir(pin_root: str | Path) -> Path:
    """Versioned pin directory: a new layout never opens an old layout's maps."""
    return Path(pin_root) / f"v{LAYOUT_VERSION}"


@dataclass
class LoadedProbe:
    backend: str
    bpf: object           # bcc.BPF
    conns: Connections    # the open and the closed map
    pending_fd: int
    pin_dir: Path
    load_seconds: float

    def stats(self) -> dict[str, int]:
        table = self.bpf["stats"]
        out = {}
        for idx, name in enumerate(STAT_NAMES):
            out[name] = sum(int(v) for v in table.getvalue(table.Key(idx)))
        return out

    def close(self):
        """Detach programs; pinned maps stay, with their entries, for the next tracer."""
        try:
            self.bpf.cleanup()
        except Exception:  # noqa: BLE001 - detaching at exit must not raise
            log.exception("BCC cleanup failed")


def expected_maps(max_conns: int, max_pending: int, max_closed: int) -> dict[str, MapInfo]:
    return {
        "conns": MapInfo(BPF_MAP_TYPE_LRU_HASH, ctypes.sizeof(ConnKey), ctypes.sizeof(Owner), max_conns),
        "closed": MapInfo(BPF_MAP_TYPE_LRU_HASH, ctypes.sizeof(ConnKey), ctypes.sizeof(Owner), max_closed),
        "pending": MapInfo(BPF_MAP_TYPE_LRU_HASH, 8, ctypes.sizeof(Owner), max_pending),
    }


def prepare_pins(pins: Path, max_conns: int, max_pending: int, max_closed: int, replace: bool) -> None:
    """Refuse (or, with replace, remove) pinned maps whose layout does not match."""
    pins.mkdir(parents=True, exist_ok=True)
    for name, info in expected_maps(max_conns, max_pending, max_closed).items():
        path = pins / name
        problem = check_pinned(path, info)
        if problem is None:
            continue
        if not replace:
            raise PinnedMapMismatch(
                problem + "; refusing to reuse it. Remove it (loses attribution of live "
                "connections until reconcile) or start with --replace-pinned."
            )
        log.warning("%s; replacing it as asked", problem)
        path.unlink()


def compile_and_attach(backend: str, pins: Path, max_conns: int, max_pending: int, max_closed: int):
    from bcc import BPF  # heavy import: only when a probe is really loaded

    src = bpf_dir()
    cflags = [
        f"-I{src}",
        f"-DCALLERID_PROBE_{backend.upper()}=1",
        f"-DCALLERID_MAX_CONNS={max_conns}",
        f"-DCALLERID_MAX_PENDING={max_pending}",
        f"-DCALLERID_MAX_CLOSED={max_closed}",
        f'-DCALLERID_PIN_CONNS="{pins / "conns"}"',
        f'-DCALLERID_PIN_CLOSED="{pins / "closed"}"',
        f'-DCALLERID_PIN_PENDING="{pins / "pending"}"',
        "-Wno-macro-redefined",
    ]
    try:
        bpf = BPF(src_file=str(src / "callerid.bpf.c").encode(), cflags=cflags)
    except Exception as exc:  # BCC raises bare Exception for compile/load errors
        raise ProbeLoadError(f"{backend}: BCC could not compile or load the program: {exc}") from exc
    try:
        if backend == "kprobe" and not bpf.num_open_kprobes():
            raise ProbeLoadError("kprobe: no kprobe attached (kernel without CONFIG_KPROBES?)")
    except ProbeLoadError:
        bpf.cleanup()
        raise
    return bpf


def self_test(conns: Connections, timeout: float = 1.0) -> None:
    """Open one loopback connection and require our own pid to show up for it."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        cli = socket.create_connection(srv.getsockname(), timeout=timeout)
        try:
            key = make_key("127.0.0.1", cli.getsockname()[1], "127.0.0.1", srv.getsockname()[1])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                owner = conns.lookup(key)
                if owner is not None:
                    if owner.tgid != os.getpid():
                        raise ProbeLoadError(f"self-test: map names pid {owner.tgid}, expected {os.getpid()}")
                    conns.delete(key)
                    return
                time.sleep(0.005)
            raise ProbeLoadError("self-test: a loopback connect did not appear in the map")
        finally:
            cli.close()
    finally:
        srv.close()


def load(backend: str, pin_root: str | Path = DEFAULT_PIN_ROOT, max_conns: int = 131072,
         max_pending: int = 16384, replace_pinned: bool = False, max_closed: int = 65536) -> LoadedProbe:
    """Load exactly one backend (or 'auto': try each in AUTO_ORDER)."""
    pins = pin_dir(pin_root)
    prepare_pins(pins, max_conns, max_pending, max_closed, replace_pinned)
    order = AUTO_ORDER if backend == "auto" else (backend,)
    if backend != "auto" and backend not in BACKENDS:
        raise ProbeLoadError(f"unknown probe backend {backend!r}; choose from {', '.join(BACKENDS)} or auto")
    failures = []
    for name in order:
        start = time.monotonic()
        try:
            bpf = compile_and_attach(name, pins, max_conns, max_pending, max_closed)
        except ProbeLoadError as exc:
            failures.append(str(exc))
            log.info("probe backend %s unavailable: %s", name, exc)
            continue
        conns = Connections(ConnMap(bpf["conns"].get_fd()), ConnMap(bpf["closed"].get_fd()))
        try:
            self_test(conns)
        except ProbeLoadError as exc:
            bpf.cleanup()
            failures.append(f"{name}: {exc}")
            log.warning("probe backend %s loaded but failed its self-test: %s", name, exc)
            continue
        loaded = LoadedProbe(name, bpf, conns, bpf["pending"].get_fd(), pins, time.monotonic() - start)
        log.info("probe backend %s loaded in %.2fs, maps pinned in %s", name, loaded.load_seconds, pins)
        return loaded
    raise ProbeLoadError("; ".join(failures))
