"""BPF map access by file descriptor: pinned-map checks, lookup, update, delete, iterate.

Goes through libbcc's thin syscall wrappers so that the same code serves a map
BCC just created and a pinned map opened without loading any program.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from bcc import libbcc

from .layout import ConnKey, Owner, make_key

_lib = libbcc.lib
_lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
_lib.bpf_obj_get.restype = ctypes.c_int


def bind_batch(lib) -> bool:
    """Declare libbcc's batch map wrappers on `lib`; False if this libbcc has none
    (BCC 0.18, Debian 11's, lacks bpf_lookup_batch): maps are then walked one key per
    syscall, as on a kernel without batch operations."""
    try:
        lookup, delete = lib.bpf_lookup_batch, lib.bpf_delete_batch
    except AttributeError:
        return False
    lookup.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_void_p, ctypes.c_void_p]
    lookup.restype = ctypes.c_int
    delete.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    delete.restype = ctypes.c_int
    return True


LIBBCC_HAS_BATCH = bind_batch(_lib)
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH = 1, 9


class _NoBatch(Exception):
    """The kernel has no BPF_MAP_LOOKUP_BATCH for this map."""


class PinnedMapMismatch(RuntimeError):
    """A map pinned at our path was made with another layout or size."""


BPF_F_NO_PREALLOC = 1


@dataclass(frozen=True)
class MapInfo:
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = field(default=0, compare=False)   # used when we create the map; a pinned one's are its own


def fdinfo(fd: int) -> dict[str, str]:
    """/proc/self/fdinfo/<fd> as a dict: for a BPF map, its type, sizes and memlock."""
    fields = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name.strip()] = value.strip()
    return fields


def map_info(fd: int) -> MapInfo:
    """Read type and sizes from /proc/self/fdinfo (no struct bpf_map_info needed)."""
    fields = fdinfo(fd)
    return MapInfo(
        map_type=int(fields["map_type"]),
        key_size=int(fields["key_size"]),
        value_size=int(fields["value_size"]),
        max_entries=int(fields["max_entries"]),
    )


def open_pinned(path: str | Path) -> int | None:
    """fd of the map pinned at path, or None if nothing is pinned there."""
    if not Path(path).exists():
        return None
    fd = _lib.bpf_obj_get(str(path).encode())
    if fd < 0:
        raise OSError(errno.EACCES, f"bpf_obj_get({path}) failed: not a BPF object or not allowed")
    return fd


def _create_map_function(lib):
    """libbcc's map-creating wrapper: bcc_create_map since BCC 0.23, bpf_create_map before."""
    for name in ("bcc_create_map", "bpf_create_map"):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
            fn.restype = ctypes.c_int
            return fn
    raise OSError(errno.ENOSYS, "this libbcc has neither bcc_create_map nor bpf_create_map")


def create_pinned(path: str | Path, name: str, info: MapInfo) -> None:
    """Create a map as `info` describes and pin it at path. BPF_TABLE_PINNED then opens it:
    BCC before 0.19 (Debian 11 has 0.18) only opens an existing pin and never creates one."""
    fd = _create_map_function(_lib)(info.map_type, name.encode()[:15], info.key_size, info.value_size,
                                    info.max_entries, info.flags)
    if fd < 0:
        err = ctypes.get_errno() or -fd
        raise OSError(err, f"creating BPF map {name} for {path}: {os.strerror(err)}")
    try:
        _lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
        _lib.bpf_obj_pin.restype = ctypes.c_int
        if _lib.bpf_obj_pin(fd, str(path).encode()) != 0:
            err = ctypes.get_errno() or errno.EPERM
            raise OSError(err, f"pinning BPF map {name} at {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def check_pinned(path: str | Path, expected: MapInfo) -> str | None:
    """None if the pinned map at path matches expected (or none is pinned);
    otherwise a sentence saying what differs."""
    fd = open_pinned(path)
    if fd is None:
        return None
    try:
        got = map_info(fd)
    finally:
        os.close(fd)
    if got == expected:
        return None
    return (
        f"pinned map {path} has type={got.map_type} key_size={got.key_size} "
        f"value_size={got.value_size} max_entries={got.max_entries}, expected "
        f"type={expected.map_type} key_size={expected.key_size} "
        f"value_size={expected.value_size} max_entries={expected.max_entries}"
    )


class ConnMap:
    """A connection map: struct callerid_key (or a u64 socket cookie) -> struct callerid_owner."""

    def __init__(self, fd: int, owns_fd: bool = False, key_type=ConnKey, value_type=Owner):
        self.fd = fd
        self._owns_fd = owns_fd
        self.key_type = key_type   # ConnKey, or the cookie backend's u64 cookie / u32 slot index
        self.value_type = value_type   # Owner, or the cookie backend's Slot (no entry_times then)
        info = map_info(fd)
        if info.key_size != ctypes.sizeof(key_type) or info.value_size != ctypes.sizeof(value_type):
            raise PinnedMapMismatch(
                f"map fd {fd}: key/value sizes {info.key_size}/{info.value_size} "
                f"!= {ctypes.sizeof(key_type)}/{ctypes.sizeof(value_type)}"
            )
        self.capacity = info.max_entries

    @classmethod
    def open_pinned(cls, path: str | Path, key_type=ConnKey, value_type=Owner) -> ConnMap | None:
        fd = open_pinned(path)
        return None if fd is None else cls(fd, owns_fd=True, key_type=key_type, value_type=value_type)

    def close(self):
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def lookup(self, key) -> Owner | None:
        value = self.value_type()
        if _lib.bpf_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value)) < 0:
            return None
        return value

    def insert_if_absent(self, key, value: Owner) -> bool:
        """Write only if no entry exists: never overwrite fresher probe data."""
        return _lib.bpf_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), BPF_NOEXIST) == 0

    def update(self, key, value: Owner) -> bool:
        return _lib.bpf_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), BPF_ANY) == 0

    def delete(self, key) -> bool:
        return _lib.bpf_delete_elem(self.fd, ctypes.byref(key)) == 0

    def keys(self):
        """Snapshot of all keys (the map may change while we walk it)."""
        out = []
        kt = self.key_type
        cur = kt()
        nxt = kt()
        if _lib.bpf_get_first_key(self.fd, ctypes.byref(nxt), ctypes.sizeof(kt)) < 0:
            return out
        while True:
            out.append(kt.from_buffer_copy(nxt))
            ctypes.memmove(ctypes.byref(cur), ctypes.byref(nxt), ctypes.sizeof(kt))
            if _lib.bpf_get_next_key(self.fd, ctypes.byref(cur), ctypes.byref(nxt)) < 0:
                return out
            if len(out) > self.capacity * 2:  # map churning under us: stop, never loop forever
                return out

    def items(self):
        """(key, value) pairs: in batches of BATCH entries per syscall where the kernel
        supports it (5.6+), one key at a time otherwise."""
        try:
            yield from self._items_batched()
        except _NoBatch:
            for key in self.keys():
                value = self.lookup(key)
                if value is not None:
                    yield key, value

    BATCH = 4096

    def _items_batched(self):
        kt = self.key_type
        vt = self.value_type
        ksize, vsize = ctypes.sizeof(kt), ctypes.sizeof(vt)
        for kbuf, vbuf, count in self._raw_batches():
            for i in range(count):
                yield (kt.from_buffer_copy(kbuf, i * ksize), vt.from_buffer_copy(vbuf, i * vsize))

    # One value's birth_ns and closed_ns (adjacent in struct callerid_owner), the rest skipped.
    _TIMES = struct.Struct(f"={Owner.birth_ns.offset}xQQ{ctypes.sizeof(Owner) - Owner.birth_ns.offset - 16}x")

    def entry_times(self):
        """(key bytes, birth_ns, closed_ns) for every entry: the sweeper's walk. The same
        batched read as items(), but per entry only two integers are unpacked from the
        batch buffer, not two ctypes objects built (~0.85 us of GIL per entry before)."""
        ksize = ctypes.sizeof(self.key_type)
        try:
            for kbuf, vbuf, _ in self._raw_batches():
                for i, (birth, closed) in enumerate(self._TIMES.iter_unpack(vbuf)):
                    yield kbuf[i * ksize:(i + 1) * ksize], birth, closed
        except _NoBatch:
            for key, value in self.items():
                yield bytes(key), value.birth_ns, value.closed_ns

    def value_batches(self):
        """The values only, as bytes, one BPF_MAP_LOOKUP_BATCH call each (kernel 5.6+);
        one value per syscall where there is no batch operation."""
        try:
            for _, vbuf, _ in self._raw_batches():
                yield vbuf
        except _NoBatch:
            for key in self.keys():
                value = self.lookup(key)
                if value is not None:
                    yield bytes(value)

    def _raw_batches(self):
        """(keys bytes, values bytes, count) per BPF_MAP_LOOKUP_BATCH call."""
        if not LIBBCC_HAS_BATCH:
            raise _NoBatch()
        keys = (self.key_type * self.BATCH)()
        values = (self.value_type * self.BATCH)()
        token_in, token_out = ctypes.c_uint32(0), ctypes.c_uint32(0)
        first, seen = True, 0
        while True:
            count = ctypes.c_uint32(self.BATCH)
            ret = _lib.bpf_lookup_batch(self.fd, None if first else ctypes.byref(token_in), ctypes.byref(token_out),
                                        keys, values, ctypes.byref(count))
            if ret < 0 and first and count.value == 0 and self._batch_unsupported():
                raise _NoBatch()
            n = count.value
            yield bytes(memoryview(keys).cast("B")[:n * ctypes.sizeof(self.key_type)]), \
                bytes(memoryview(values).cast("B")[:n * ctypes.sizeof(self.value_type)]), n
            seen += n
            if ret < 0 or seen > self.capacity * 2:  # ENOENT: walked the whole map
                return
            token_in.value, first = token_out.value, False

    def delete_many(self, keys: list[bytes]) -> int:
        """Delete these keys (as from entry_times), BATCH per syscall; returns how many
        were deleted. A key already gone (evicted, deleted meanwhile) is skipped."""
        kt = self.key_type
        ksize, done = ctypes.sizeof(kt), 0
        if not LIBBCC_HAS_BATCH:
            return sum(self.delete(kt.from_buffer_copy(k)) for k in keys)
        for start in range(0, len(keys), self.BATCH):
            chunk = keys[start:start + self.BATCH]
            while chunk:
                buf = ctypes.create_string_buffer(b"".join(chunk), len(chunk) * ksize)
                count = ctypes.c_uint32(len(chunk))
                ret = _lib.bpf_delete_batch(self.fd, buf, ctypes.byref(count))
                done += count.value
                if ret == 0:
                    break
                rest = chunk[count.value:]   # the kernel stops at the first key it cannot delete
                stuck = kt.from_buffer_copy(rest[0])
                if count.value == 0 and self.lookup(stuck) is not None:
                    # it exists, so batch delete itself failed (no support): one syscall per key
                    done += sum(self.delete(kt.from_buffer_copy(k)) for k in rest)
                    break
                chunk = rest[1:]             # that key was gone already (evicted, deleted meanwhile)
        return done

    def _batch_unsupported(self) -> bool:
        """An empty map also ends a first batch with an error: tell that from no support."""
        return self.keys() != []

    def __len__(self):
        return len(self.keys())


class Connections:
    """Open and closed connections: two ConnMaps (pinned `conns` and `closed`) behind one interface.

    The BPF program moves an entry from the open map to the closed map when its
    socket closes. LRU eviction is per map, so churn of short connections evicts
    closed entries, never long-lived open ones.
    """

    def __init__(self, open_: ConnMap, closed: ConnMap):
        self.open = open_
        self.closed = closed

    @classmethod
    def open_pinned(cls, pin_dir: str | Path) -> Connections | None:
        """Both maps pinned in pin_dir, or None unless both are pinned there."""
        open_ = ConnMap.open_pinned(Path(pin_dir) / "conns")
        if open_ is None:
            return None
        try:
            closed = ConnMap.open_pinned(Path(pin_dir) / "closed")
        except BaseException:
            open_.close()
            raise
        if closed is None:
            open_.close()
            return None
        return cls(open_, closed)

    @property
    def capacity(self) -> int:
        """Entries both maps can hold together (each map's own is .open/.closed.capacity)."""
        return self.open.capacity + self.closed.capacity

    def close(self):
        self.open.close()
        self.closed.close()

    def find(self, src_ip, src_port: int, dst_ip, dst_port: int) -> Owner | None:
        """The owner of the connection src -> dst (the key carries no netns: 0)."""
        return self.lookup(make_key(src_ip, src_port, dst_ip, dst_port))

    def record_existing(self, sock, pid: int, owner: Owner) -> bool:
        """Start-up reconcile: add a connection the probe never saw (pid unused here)."""
        return self.insert_if_absent(make_key(sock.src, sock.sport, sock.dst, sock.dport), owner)

    def lookup(self, key: ConnKey) -> Owner | None:
        # Open first: a tuple reused within the grace names its new owner.
        value = self.open.lookup(key)
        return value if value is not None else self.closed.lookup(key)

    def insert_if_absent(self, key: ConnKey, value: Owner) -> bool:
        """Write to the open map unless it has the key. A closed entry for the same
        tuple does not count: it belongs to an earlier connection (ephemeral ports come
        round within the grace under churn), and the live socket being inserted must win
        the lookup, or its question would be answered with the earlier owner."""
        return self.open.insert_if_absent(key, value)

    def update(self, key: ConnKey, value: Owner) -> bool:
        """A closed value (closed_ns set) goes to the closed map and leaves the open one."""
        if not value.closed_ns:
            return self.open.update(key, value)
        if not self.closed.update(key, value):
            return False
        self.open.delete(key)
        return True

    def delete(self, key: ConnKey) -> bool:
        """Delete from both maps; True if either had the key."""
        in_open = self.open.delete(key)
        in_closed = self.closed.delete(key)
        return in_open or in_closed

    def items(self):
        """(key, value) pairs of the open map, then of the closed map. An entry that
        moves while we walk may show up in both; it is never missed."""
        yield from self.open.items()
        yield from self.closed.items()

    def keys(self):
        return self.open.keys() + self.closed.keys()

    def __len__(self):
        return len(self.open) + len(self.closed)
