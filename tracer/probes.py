"""Compile a BPF program with BCC for one probe backend, attach it, and prove it works.

  cookie      bpf/callerid_ck.bpf.c: the owner by socket cookie in a direct-mapped array
              (a hash when the slot is busy), written by cgroup connect4/connect6 programs on
              the cgroup v2 root, stamped closed by cgroup sock_release; read through one
              exact sock_diag lookup (Linux 5.9+)
  sockstore   bpf/callerid_sk.bpf.c: the owner on the socket (SK_STORAGE), written by
              cgroup connect4/connect6 programs on the cgroup v2 root, a closed copy
              kept by cgroup sock_release; read through sock_diag (Linux 5.10+)
The tuple-keyed backends, bpf/callerid.bpf.c, differ only in where the owner is captured:
  tracepoint  sock:inet_sock_set_state CLOSE->SYN_SENT (works everywhere with tracepoints)
  kprobe      kprobe on tcp_connect            (needs CONFIG_KPROBES)
  fentry      fentry on tcp_connect            (needs BPF trampolines; EPERM on some VMs)
Selection is by trying, not by trusting feature probes: BCC's support_kfunc()
says yes on kernels where fentry loads fail. Each loaded backend must pass a
self-test (a loopback connection that must appear in the map with our pid)
before it is accepted. AUTO_ORDER is cheapest first, as measured by
bench/probe_bench.py (docs/BENCHMARKS.md, "Probe designs side by side").
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .bpfmap import (
    BPF_F_NO_PREALLOC,
    BPF_MAP_TYPE_LRU_HASH,
    Connections,
    ConnMap,
    MapInfo,
    PinnedMapMismatch,
    check_pinned,
    create_pinned,
)
from .cookiestore import CookieStore
from .layout import LAYOUT_VERSION, STAT_NAMES, ConnKey, Owner, SkRecord, Slot, bpf_dir, make_key
from .sockstore import SockStore, own_netns_cookie

log = logging.getLogger("callerid.tracer.probes")

BACKENDS = ("cookie", "sockstore", "fentry", "kprobe", "tracepoint")
AUTO_ORDER = ("cookie", "sockstore", "fentry", "kprobe", "tracepoint")
BPF_MAP_TYPE_HASH_ = 1
BPF_MAP_TYPE_ARRAY_ = 2
BPF_MAP_TYPE_SK_STORAGE = 24
MAX_UIDS = 65536   # uids with a closed-entry share tracked at once (LRU beyond)
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
    conns: Connections | SockStore | CookieStore
    pending_fd: int       # -1 for cookie and sockstore
    pin_dir: Path
    load_seconds: float
    links: tuple = ()     # cookie, sockstore: bpf_link fds; closing them detaches the programs

    def program_fds(self) -> dict[str, int]:
        """name -> fd of every loaded program (for bpf_stats: /proc/self/fdinfo/<fd>)."""
        return {name.decode() if isinstance(name, bytes) else name: fn.fd for name, fn in self.bpf.funcs.items()}

    def stats(self) -> dict[str, int]:
        table = self.bpf["stats"]
        out = {}
        for idx, name in enumerate(STAT_NAMES):
            out[name] = sum(int(v) for v in table.getvalue(table.Key(idx)))
        return out

    def close(self):
        """Detach programs; pinned maps stay, with their entries, for the next tracer."""
        for fd in self.links:
            os.close(fd)
        self.links = ()
        try:
            self.bpf.cleanup()
        except Exception:  # noqa: BLE001 - detaching at exit must not raise
            log.exception("BCC cleanup failed")


def expected_maps(max_conns: int, max_pending: int, max_closed: int, backend: str = "tracepoint"
                  ) -> dict[str, MapInfo]:
    if backend == "cookie":
        # the direct-mapped slots, and the spill hash that alone can hold every record
        return {"ck_slots": MapInfo(BPF_MAP_TYPE_ARRAY_, 4, ctypes.sizeof(Slot), cookie_slots(max_conns, max_closed)),
                # allocated as records spill (~10% of connects under churn), not all up front
                "ck_spill": MapInfo(BPF_MAP_TYPE_HASH_, 8, ctypes.sizeof(Owner), max_conns + max_closed,
                                    BPF_F_NO_PREALLOC)}
    if backend == "sockstore":
        return {
            "owners": MapInfo(BPF_MAP_TYPE_SK_STORAGE, 4, ctypes.sizeof(SkRecord), 0),
            "sk_closed": MapInfo(BPF_MAP_TYPE_HASH_, ctypes.sizeof(ConnKey), ctypes.sizeof(Owner), max_closed),
        }
    return {
        "conns": MapInfo(BPF_MAP_TYPE_LRU_HASH, ctypes.sizeof(ConnKey), ctypes.sizeof(Owner), max_conns),
        "closed": MapInfo(BPF_MAP_TYPE_LRU_HASH, ctypes.sizeof(ConnKey), ctypes.sizeof(Owner), max_closed),
        "pending": MapInfo(BPF_MAP_TYPE_LRU_HASH, 8, ctypes.sizeof(Owner), max_pending),
    }


# Map types we create and pin before BCC loads the program (create_pinned); BCC makes the rest.
_PRECREATED_TYPES = (BPF_MAP_TYPE_HASH_, BPF_MAP_TYPE_ARRAY_, BPF_MAP_TYPE_LRU_HASH)


def cookie_slots(max_conns: int, max_closed: int) -> int:
    """The cookie backend's slot count: a power of two (the index is cookie & (slots - 1)),
    at least every record the spill hash can hold, so that slots stay mostly free."""
    n = 1
    while n < max_conns + max_closed:
        n <<= 1
    return n


def prepare_pins(pins: Path, max_conns: int, max_pending: int, max_closed: int, replace: bool,
                 backend: str = "tracepoint") -> None:
    """Refuse (or, with replace, remove) pinned maps whose layout does not match, then create
    and pin the missing hash maps ourselves, so that BPF_TABLE_PINNED only ever opens a pin
    (what every BCC since 0.18 can do; creating one needs BCC 0.19)."""
    pins.mkdir(parents=True, exist_ok=True)
    for name, info in expected_maps(max_conns, max_pending, max_closed, backend).items():
        path = pins / name
        problem = check_pinned(path, info)
        if problem is not None:
            if not replace:
                raise PinnedMapMismatch(
                    problem + "; refusing to reuse it. Remove it (loses attribution of live "
                    "connections until reconcile) or start with --replace-pinned."
                )
            log.warning("%s; replacing it as asked", problem)
            path.unlink()
        if info.map_type in _PRECREATED_TYPES and not path.exists():
            create_pinned(path, name, info)


def _compile(backend: str, source: str, defines: list[str]):
    """BCC-compile bpf/<source> with these -D flags; bpf/ is on the include path (the
    programs include their headers from it)."""
    from bcc import BPF  # heavy import: only when a probe is really loaded

    src = bpf_dir()
    cflags = [f"-I{src}", *defines, "-Wno-macro-redefined"]
    try:
        return BPF(src_file=str(src / source).encode(), cflags=cflags)
    except Exception as exc:  # BCC raises bare Exception for compile/load errors
        raise ProbeLoadError(f"{backend}: BCC could not compile or load the program: {exc}") from exc


def compile_and_attach(backend: str, pins: Path, max_conns: int, max_pending: int, max_closed: int):
    bpf = _compile(backend, "callerid.bpf.c", [
        f"-DCALLERID_PROBE_{backend.upper()}=1",
        f"-DCALLERID_MAX_CONNS={max_conns}",
        f"-DCALLERID_MAX_PENDING={max_pending}",
        f"-DCALLERID_MAX_CLOSED={max_closed}",
        f'-DCALLERID_PIN_CONNS="{pins / "conns"}"',
        f'-DCALLERID_PIN_CLOSED="{pins / "closed"}"',
        f'-DCALLERID_PIN_PENDING="{pins / "pending"}"',
    ])
    try:
        if backend == "kprobe" and not bpf.num_open_kprobes():
            raise ProbeLoadError("kprobe: no kprobe attached (kernel without CONFIG_KPROBES?)")
    except ProbeLoadError:
        bpf.cleanup()
        raise
    return bpf


def cgroup2_root(mounts: str = "/proc/mounts") -> str:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup on a pure v2 host,
    /sys/fs/cgroup/unified on a hybrid one)."""
    with open(mounts) as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return fields[1].replace("\\040", " ")
    raise ProbeLoadError("no cgroup2 hierarchy mounted (needed to attach to every process)")


_SOCKSTORE_PROGRAMS = (
    # (function, BCC program type name, attach type name)
    ("callerid_connect4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_CONNECT"),
    ("callerid_connect6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_CONNECT"),
    ("callerid_sockops", "SOCK_OPS", "CGROUP_SOCK_OPS"),
    ("callerid_release", "CGROUP_SOCK", "CGROUP_INET_SOCK_RELEASE"),
)


def _link_create():
    """libbpf's bpf_link_create (BCC 0.26 attaches cgroup programs without links: a
    crashed tracer would leave them attached; a link detaches when its fd closes)."""
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    fn = lib.bpf_link_create
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


# BPF_TABLE_PINNED creates a missing pin only since BCC 0.20 (iovisor/bcc#3382); the
# socket-storage map needs BTF to be created, so we cannot make it ourselves as we do the
# hash maps (prepare_pins). Measured: 0.18 (Debian 11) cannot, 0.26 and 0.31 can.
SOCKSTORE_BCC_FLOOR = (0, 20)


def bcc_version(module) -> tuple[int, ...]:
    """BCC's version as numbers; (0,) if this BCC does not say."""
    text = getattr(module, "__version__", "0")
    return tuple(int(x) for x in text.split("-")[0].split(".")[:3] if x.isdigit()) or (0,)


_COOKIE_PROGRAMS = (
    ("callerid_connect4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_CONNECT"),
    ("callerid_connect6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_CONNECT"),
    ("callerid_release", "CGROUP_SOCK", "CGROUP_INET_SOCK_RELEASE"),
)


def attach_to_cgroup_root(bpf, programs, backend: str) -> tuple:
    """Load each (function, program type, attach type) and link it to the cgroup v2 root;
    returns the link fds (closing them detaches). On failure every link made is closed."""
    import bcc
    from bcc import BPF

    root = cgroup2_root()
    links = []
    link_create = _link_create()
    cg = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for func, prog_type, attach in programs:
            attach_type = getattr(bcc.BPFAttachType, attach)
            fn = bpf.load_func(func.encode(), getattr(BPF, prog_type), attach_type=attach_type)
            link = link_create(fn.fd, cg, attach_type, None)
            if link < 0:
                err = ctypes.get_errno()
                raise ProbeLoadError(f"{backend}: attaching {func} to {root}: {os.strerror(err)}")
            links.append(link)
    except BaseException:
        for fd in links:
            os.close(fd)
        raise
    finally:
        os.close(cg)
    return tuple(links)


def netns_cookie_or_refuse(backend: str) -> int:
    """Our network namespace's cookie, which the cookie and sockstore backends key on; a
    kernel that cannot tell it (SO_NETNS_COOKIE is Linux 5.14; Debian 11's 5.10 says
    ENOPROTOOPT, measured in the VM tier) refuses the backend, saying why."""
    try:
        return own_netns_cookie()
    except OSError as exc:
        raise ProbeLoadError(f"{backend}: this kernel cannot tell the network namespace's cookie "
                             f"(SO_NETNS_COOKIE, Linux 5.14 or later): {exc.strerror or exc}") from exc


def _compile_and_link(backend: str, source: str, defines: list[str], programs, map_fds) -> tuple:
    """Compile bpf/<source>, link its programs to the cgroup v2 root, and read its maps' fds
    (map_fds(bpf) -> tuple). Returns (bpf, link fds, *map fds); on any failure nothing stays
    loaded or attached."""
    cgroup2_root()   # fail before compiling where there is nothing to attach to
    bpf = _compile(backend, source, defines)
    links = ()
    try:
        links = attach_to_cgroup_root(bpf, programs, backend)
        fds = map_fds(bpf)
    except Exception as exc:
        for fd in links:
            os.close(fd)
        bpf.cleanup()
        if isinstance(exc, ProbeLoadError):
            raise
        raise ProbeLoadError(f"{backend}: could not load or attach the programs: {exc}") from exc
    return (bpf, links, *fds)


def compile_and_attach_cookie(pins: Path, max_conns: int, max_closed: int, grace_seconds: float,
                              closed_share: int):
    """Returns (bpf, link fds, slots map fd, spill map fd)."""
    netns = netns_cookie_or_refuse("cookie")
    return _compile_and_link("cookie", "callerid_ck.bpf.c", [
        f"-DCALLERID_SLOTS={cookie_slots(max_conns, max_closed)}",
        f"-DCALLERID_MAX_OWNERS={max_conns + max_closed}",
        f"-DCALLERID_MAX_UIDS={MAX_UIDS}",
        f"-DCALLERID_CLOSED_SHARE={closed_share}ULL",
        f"-DCALLERID_CLOSED_BUDGET={max(1, max_closed // 3)}ULL",
        f"-DCALLERID_GRACE_NS={int(grace_seconds * 1e9)}ULL",
        f"-DCALLERID_NETNS={netns}ULL",
        f'-DCALLERID_PIN_SLOTS="{pins / "ck_slots"}"',
        f'-DCALLERID_PIN_SPILL="{pins / "ck_spill"}"',
    ], _COOKIE_PROGRAMS, lambda bpf: (bpf["slots"].get_fd(), bpf["spill"].get_fd()))


def compile_and_attach_sockstore(pins: Path, max_closed: int, grace_seconds: float, closed_share: int):
    """Returns (bpf, link fds, owners map fd, closed map fd)."""
    import bcc
    from bcc import libbcc

    version = bcc_version(bcc)
    if version < SOCKSTORE_BCC_FLOOR and not (pins / "owners").exists():
        raise ProbeLoadError(
            f"sockstore: BCC {'.'.join(map(str, version))} cannot create the pinned socket-storage map "
            f"(needs BCC {'.'.join(map(str, SOCKSTORE_BCC_FLOOR))} or later); use fentry, kprobe or tracepoint")
    netns_cookie_or_refuse("sockstore")
    return _compile_and_link("sockstore", "callerid_sk.bpf.c", [
        f"-DCALLERID_MAX_CLOSED={max_closed}",
        f"-DCALLERID_MAX_UIDS={MAX_UIDS}",
        f"-DCALLERID_CLOSED_SHARE={closed_share}ULL",
        f"-DCALLERID_GRACE_NS={int(grace_seconds * 1e9)}ULL",
        f'-DCALLERID_PIN_OWNERS="{pins / "owners"}"',
        f'-DCALLERID_PIN_CLOSED="{pins / "sk_closed"}"',
    ], _SOCKSTORE_PROGRAMS,
        lambda bpf: (libbcc.lib.bpf_table_fd(bpf.module, b"owners"), bpf["closed"].get_fd()))


def self_test(conns: Connections | SockStore | CookieStore, timeout: float = 1.0) -> None:
    """Open one loopback connection and require our own pid to show up for it."""
    records_close = getattr(conns, "records_close", False)   # the close path is the program's too
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
                    if not records_close:
                        conns.delete(key)
                    break
                time.sleep(0.005)
            else:
                raise ProbeLoadError("self-test: a loopback connect did not appear in the map")
        finally:
            cli.close()
        if records_close:
            # the close path too: the owner must outlive the socket in the closed map
            owner = conns.lookup(key)
            conns.delete(key)
            if owner is None or not owner.closed_ns:
                raise ProbeLoadError("self-test: a closed loopback connection left no closed record")
    finally:
        srv.close()


def load(backend: str, pin_root: str | Path = DEFAULT_PIN_ROOT, max_conns: int = 131072,
         max_pending: int = 16384, replace_pinned: bool = False, max_closed: int = 65536,
         grace_seconds: float = 120.0, closed_share: int = 1024) -> LoadedProbe:
    """Load exactly one backend (or 'auto': try each in AUTO_ORDER)."""
    pins = pin_dir(pin_root)
    order = AUTO_ORDER if backend == "auto" else (backend,)
    if backend != "auto" and backend not in BACKENDS:
        raise ProbeLoadError(f"unknown probe backend {backend!r}; choose from {', '.join(BACKENDS)} or auto")
    failures = []
    for name in order:
        prepare_pins(pins, max_conns, max_pending, max_closed, replace_pinned, name)
        start = time.monotonic()
        links, pending_fd = (), -1
        try:
            if name == "cookie":
                bpf, links, slots_fd, spill_fd = compile_and_attach_cookie(pins, max_conns, max_closed,
                                                                           grace_seconds, closed_share)
                conns = CookieStore(ConnMap(slots_fd, key_type=ctypes.c_uint32, value_type=Slot),
                                    ConnMap(spill_fd, key_type=ctypes.c_uint64), grace_seconds, max_closed)
            elif name == "sockstore":
                bpf, links, owners_fd, closed_fd = compile_and_attach_sockstore(pins, max_closed, grace_seconds,
                                                                                closed_share)
                conns = SockStore(owners_fd, ConnMap(closed_fd))
            else:
                bpf = compile_and_attach(name, pins, max_conns, max_pending, max_closed)
                conns = Connections(ConnMap(bpf["conns"].get_fd()), ConnMap(bpf["closed"].get_fd()))
                pending_fd = bpf["pending"].get_fd()
        except (ProbeLoadError, OSError) as exc:
            failures.append(str(exc))
            log.info("probe backend %s unavailable: %s", name, exc)
            continue
        loaded = LoadedProbe(name, bpf, conns, pending_fd, pins, 0.0, links)
        try:
            self_test(conns)
        except (ProbeLoadError, OSError) as exc:
            loaded.close()
            failures.append(f"{name}: {exc}")
            log.warning("probe backend %s loaded but failed its self-test: %s", name, exc)
            continue
        loaded.load_seconds = time.monotonic() - start
        log.info("probe backend %s loaded in %.2fs, maps pinned in %s", name, loaded.load_seconds, pins)
        return loaded
    raise ProbeLoadError("; ".join(failures))
