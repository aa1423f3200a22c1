"""MUNGE credentials through libmunge (ctypes), as Slurm uses them."""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from dataclasses import dataclass

# munge_opt_t and munge_err_t values from /usr/include/munge.h (MUNGE 0.5.x).
MUNGE_OPT_CIPHER_TYPE = 0
MUNGE_OPT_TTL = 4
MUNGE_OPT_SOCKET = 8
MUNGE_OPT_UID_RESTRICTION = 9
MUNGE_CIPHER_AES128 = 4
EMUNGE_SUCCESS = 0
EMUNGE_BAD_ARG = 2
EMUNGE_NO_MEMORY = 5

# Stable names for munge_err_t, so callers and metrics never depend on message text.
_REASONS = {
    1: "snafu",
    2: "bad_arg",
    3: "bad_length",
    4: "overflow",
    5: "no_memory",
    6: "socket",
    7: "timeout",
    8: "bad_cred",
    9: "bad_version",
    10: "bad_cipher",
    11: "bad_mac",
    12: "bad_zip",
    13: "bad_realm",
    14: "cred_invalid",
    15: "cred_expired",
    16: "cred_rewound",
    17: "cred_replayed",
    18: "cred_unauthorized",
}

LIBRARY = "libmunge.so.2"
# code for "libmunge could not be loaded": not a munge_err_t, so outside its range.
NO_LIBRARY = -1


class MungeError(Exception):
    """A libmunge call failed; `code` is the munge_err_t, `reason` a stable snake_case name."""

    def __init__(self, code: int, message: str, socket_path: str | None = None):
        self.code = code
        self.reason = "library" if code == NO_LIBRARY else _REASONS.get(code, "other")
        self.socket_path = socket_path
        super().__init__(f"{message} (socket {socket_path})" if socket_path else message)


@dataclass(frozen=True)
class Decoded:
    """A valid credential: its payload and the uid/gid of the process that encoded it."""

    payload: bytes
    uid: int
    gid: int


class _Lib:
    """The loaded libmunge and libc functions, with their C signatures."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(LIBRARY)
        # free() must be libc's: libmunge hands out malloc()ed buffers.
        libc = ctypes.CDLL(None)
        vp, ip, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
        self.free = libc.free
        self.free.argtypes, self.free.restype = [vp], None
        self.encode = lib.munge_encode
        self.encode.argtypes = [ctypes.POINTER(vp), vp, vp, ip]
        self.encode.restype = ip
        self.decode = lib.munge_decode
        self.decode.argtypes = [ctypes.c_char_p, vp, ctypes.POINTER(vp), ctypes.POINTER(ip),
                                ctypes.POINTER(u32), ctypes.POINTER(u32)]
        self.decode.restype = ip
        self.strerror = lib.munge_strerror
        self.strerror.argtypes, self.strerror.restype = [ip], ctypes.c_char_p
        self.ctx_create = lib.munge_ctx_create
        self.ctx_create.argtypes, self.ctx_create.restype = [], vp
        self.ctx_destroy = lib.munge_ctx_destroy
        self.ctx_destroy.argtypes, self.ctx_destroy.restype = [vp], None
        self.ctx_strerror = lib.munge_ctx_strerror
        self.ctx_strerror.argtypes, self.ctx_strerror.restype = [vp], ctypes.c_char_p
        # munge_ctx_set/get are variadic: no argtypes, every argument passed as an
        # explicit ctypes object so it is widened the way the C caller would.
        self.ctx_set = lib.munge_ctx_set
        self.ctx_set.restype = ip
        self.ctx_get = lib.munge_ctx_get
        self.ctx_get.restype = ip
        self.default_socket = self._default_socket()

    def _default_socket(self) -> str | None:
        # The socket libmunge uses without a ctx is compiled in; ask it rather than guess.
        ctx = self.ctx_create()
        if not ctx:
            return None
        try:
            out = ctypes.c_char_p()
            rc = self.ctx_get(ctypes.c_void_p(ctx), ctypes.c_int(MUNGE_OPT_SOCKET), ctypes.byref(out))
            return out.value.decode() if rc == EMUNGE_SUCCESS and out.value else None
        finally:
            self.ctx_destroy(ctx)


_lib: _Lib | None = None
_lib_lock = threading.Lock()


def _load() -> _Lib:
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                _lib = _Lib()
            except (OSError, AttributeError) as e:
                raise MungeError(NO_LIBRARY, f"cannot load {LIBRARY}: {e}") from None
        return _lib


def _message(lib: _Lib, code: int, ctx: int | None) -> str:
    # The ctx message names the failing file or errno; the plain one is generic.
    text = lib.ctx_strerror(ctx) if ctx else None
    if not text:
        text = lib.strerror(code)
    return text.decode(errors="replace") if text else f"munge error {code}"


def _make_ctx(lib: _Lib, socket_path: str | None, ints: dict[int, int]) -> int | None:
    """A munge context with the socket and integer options set, or None for all defaults."""
    if socket_path is None and not ints:
        return None
    ctx = lib.ctx_create()
    if not ctx:
        raise MungeError(EMUNGE_NO_MEMORY, "munge_ctx_create failed", socket_path)
    try:
        if socket_path is not None:
            rc = lib.ctx_set(ctypes.c_void_p(ctx), ctypes.c_int(MUNGE_OPT_SOCKET),
                             ctypes.c_char_p(os.fsencode(socket_path)))
            if rc != EMUNGE_SUCCESS:
                raise MungeError(rc, _message(lib, rc, ctx), socket_path)
        for opt, value in ints.items():
            rc = lib.ctx_set(ctypes.c_void_p(ctx), ctypes.c_int(opt), ctypes.c_int(int(value)))
            if rc != EMUNGE_SUCCESS:
                raise MungeError(rc, _message(lib, rc, ctx), socket_path)
    except BaseException:
        lib.ctx_destroy(ctx)
        raise
    return ctx


EMUNGE_SOCKET = 6
EMUNGE_TIMEOUT = 7
# At most this many libmunge calls outlive their caller's deadline at once (munged hung);
# past that, callers time out without starting another thread.
MAX_ABANDONED_CALLS = 16


class _BoundedCalls:
    """Runs libmunge calls on a few daemon threads so that a caller can stop waiting for them.

    libmunge has no per-call timeout: against a stopped munged one call retries for
    seconds (issue 12 saw 6.8 s). A C call cannot be interrupted, so the caller waits
    for its own deadline and leaves the call to finish, unobserved, on its thread.
    Threads are kept for the next call (a new thread per call costs ~0.1 ms)."""

    def __init__(self, limit: int):
        self._slots = threading.BoundedSemaphore(limit)   # calls in flight, abandoned ones included
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def run(self, fn, timeout: float, socket_path: str | None):
        if timeout <= 0 or not self._slots.acquire(timeout=timeout):
            raise MungeError(EMUNGE_TIMEOUT, "munged did not answer before the deadline (too many calls pending)",
                             socket_path)
        done = threading.Event()
        box: list = []
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._jobs.put((fn, box, done))
        if spawn:
            threading.Thread(target=self._serve, name="munge-call", daemon=True).start()
        if not done.wait(timeout):
            raise MungeError(EMUNGE_TIMEOUT, f"munged did not answer within {timeout:.2f}s", socket_path)
        ok, value = box[0]
        if ok:
            return value
        raise value

    def _serve(self):
        while True:
            try:
                fn, box, done = self._jobs.get(timeout=60)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0 and self._jobs.empty():
                        self._idle -= 1
                        return
                continue
            try:
                box.append((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                box.append((False, exc))
            finally:
                self._slots.release()
                done.set()
                with self._lock:
                    self._idle += 1


_bounded = _BoundedCalls(MAX_ABANDONED_CALLS)


def _after_fork_in_child() -> None:
    # A forked child has none of the parent's threads: start from an empty pool.
    global _bounded
    _bounded = _BoundedCalls(MAX_ABANDONED_CALLS)


os.register_at_fork(after_in_child=_after_fork_in_child)


def encode(payload: bytes, socket_path: str | None = None, ttl: int | None = None,
           secret_for_uid: int | None = None, timeout: float | None = None) -> bytes:
    """Return a credential (ASCII bytes) for `payload`, made by munged for this process's uid/gid.

    secret_for_uid: encrypt the payload (AES-128, whatever munged's default) and let
    only that uid decode it, for payloads that carry a secret.
    timeout: give up after this many seconds (MungeError reason "timeout"); None waits
    as long as libmunge does.
    """
    if timeout is not None:
        return _bounded.run(lambda: encode(payload, socket_path, ttl, secret_for_uid), timeout,
                            socket_path)
    lib = _load()
    payload = bytes(payload)
    where = socket_path or lib.default_socket
    ints = {} if ttl is None else {MUNGE_OPT_TTL: ttl}
    if secret_for_uid is not None:
        ints.update({MUNGE_OPT_CIPHER_TYPE: MUNGE_CIPHER_AES128, MUNGE_OPT_UID_RESTRICTION: secret_for_uid})
    ctx = _make_ctx(lib, socket_path, ints)
    cred = ctypes.c_void_p()
    try:
        rc = lib.encode(ctypes.byref(cred), ctx, payload or None, len(payload))
        try:
            if rc != EMUNGE_SUCCESS:
                raise MungeError(rc, _message(lib, rc, ctx), where)
            return ctypes.string_at(cred.value)
        finally:
            if cred.value:
                lib.free(cred.value)
    finally:
        if ctx:
            lib.ctx_destroy(ctx)


def decode(cred: bytes, socket_path: str | None = None, timeout: float | None = None) -> Decoded:
    """Validate `cred` with munged and return its payload and the encoder's uid/gid.
    timeout: as for encode()."""
    if timeout is not None:
        return _bounded.run(lambda: decode(cred, socket_path), timeout, socket_path)
    lib = _load()
    cred = bytes(cred)
    where = socket_path or lib.default_socket
    # libmunge reads a C string: an embedded NUL would silently cut the credential.
    if b"\0" in cred:
        raise MungeError(EMUNGE_BAD_ARG, "credential contains a NUL byte", where)
    ctx = _make_ctx(lib, socket_path, {})
    buf, length = ctypes.c_void_p(), ctypes.c_int(0)
    uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
    try:
        rc = lib.decode(cred, ctx, ctypes.byref(buf), ctypes.byref(length),
                        ctypes.byref(uid), ctypes.byref(gid))
        try:
            # Expired/rewound/replayed still fill payload, uid and gid: never trust them.
            if rc != EMUNGE_SUCCESS:
                raise MungeError(rc, _message(lib, rc, ctx), where)
            payload = ctypes.string_at(buf.value, length.value) if buf.value else b""
            return Decoded(payload, uid.value, gid.value)
        finally:
            if buf.value:
                lib.free(buf.value)
    finally:
        if ctx:
            lib.ctx_destroy(ctx)


def available(socket_path: str | None = None) -> str | None:
    """None if an encode+decode round trip works, else a one-line reason."""
    probe = b"callerid-doctor"
    try:
        got = decode(encode(probe, socket_path), socket_path)
    except MungeError as e:
        return f"munge {e.reason}: {e}"
    if got.payload != probe:
        return "munge round trip returned a different payload"
    if got.uid != os.geteuid():
        return f"munge round trip reports uid {got.uid}, expected {os.geteuid()}"
    return None
