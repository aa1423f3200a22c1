"""Run a command with the kernel refusing its BPF link attachments (seccomp), so that
probe backends fail for real on kernels where every backend works.

    python3 deny_bpf_attach.py -- CMD ARGS...

A seccomp filter makes bpf(2) fail with EPERM for BPF_RAW_TRACEPOINT_OPEN (how BCC attaches
fentry programs) and BPF_LINK_CREATE (how the sockstore backend attaches its cgroup
programs, and how newer libbpf attaches fentry). kprobe and tracepoint attach through
perf_event_open(2) and keep working. The filter is inherited across exec, so the daemon
itself meets it. Standard library only: run by path, not as a package module.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

BPF_RAW_TRACEPOINT_OPEN = 17
BPF_LINK_CREATE = 28
DENIED_COMMANDS = (BPF_RAW_TRACEPOINT_OPEN, BPF_LINK_CREATE)

# machine -> (AUDIT_ARCH_*, bpf syscall number)
ARCHES = {"x86_64": (0xC000003E, 321), "aarch64": (0xC00000B7, 280)}

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
# classic BPF opcodes
LD_W_ABS = 0x20
JEQ_K = 0x15
RET_K = 0x06
# struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6] (args[0]'s low word at 16, little endian)
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16


def filter_program(arch: int, nr: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions: deny DENIED_COMMANDS of bpf(2), allow everything else."""
    allow = 6 + len(DENIED_COMMANDS)          # index of the final ALLOW
    deny = allow - 1
    prog = [(LD_W_ABS, 0, 0, OFF_ARCH),
            (JEQ_K, 0, allow - 2, arch),
            (LD_W_ABS, 0, 0, OFF_NR),
            (JEQ_K, 0, allow - 4, nr),
            (LD_W_ABS, 0, 0, OFF_ARG0)]
    for i, cmd in enumerate(DENIED_COMMANDS):
        at = len(prog)
        last = i == len(DENIED_COMMANDS) - 1
        prog.append((JEQ_K, deny - at - 1, (allow - at - 1) if last else 0, cmd))
    prog += [(RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM), (RET_K, 0, 0, SECCOMP_RET_ALLOW)]
    assert len(prog) == allow + 1
    return prog


def install() -> None:
    machine = platform.machine()
    if machine not in ARCHES:
        raise SystemExit(f"deny_bpf_attach: no seccomp numbers for {machine}")
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in filter_program(*ARCHES[machine]))
    buf = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(raw) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise SystemExit(f"deny_bpf_attach: prctl(PR_SET_SECCOMP): {os.strerror(err)}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SystemExit("usage: deny_bpf_attach.py -- CMD ARGS...")
    install()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
