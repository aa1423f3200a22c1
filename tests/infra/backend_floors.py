"""What the running platform lets each probe backend do, and the refusal the tracer must give
at start-up where it cannot (docs/INSTALL.md, "Floors"; measured in the VM tier)."""

from __future__ import annotations

import os

# cookie and sockstore key on our network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14);
# on Debian 11's 5.10 the tracer refuses both before compiling (tracer/probes.py)
NETNS_COOKIE_KERNEL_FLOOR = (5, 14)

# the start of each refusal, as tracer/probes.py words it
COOKIE_REFUSAL = "this kernel cannot tell the network namespace's cookie"
SOCKSTORE_BCC_REFUSAL = "cannot create the pinned socket-storage map"


def kernel_version(release: str | None = None) -> tuple[int, ...]:
    return tuple(int(x) for x in (release or os.uname().release).split("-")[0].split(".")[:2])


def bcc_version() -> tuple[int, ...]:
    import bcc

    from callerid.tracer.probes import bcc_version as version_of
    return version_of(bcc)


def refusal(backend: str, kernel: tuple[int, ...] | None = None, bcc: tuple[int, ...] | None = None) -> str | None:
    """The refusal the tracer must log when asked for BACKEND here, or None where it loads."""
    from callerid.tracer.probes import SOCKSTORE_BCC_FLOOR
    # in the tracer's order: sockstore checks BCC before the kernel
    if backend == "sockstore" and (bcc or bcc_version()) < SOCKSTORE_BCC_FLOOR:
        return SOCKSTORE_BCC_REFUSAL
    if backend in ("cookie", "sockstore") and (kernel or kernel_version()) < NETNS_COOKIE_KERNEL_FLOOR:
        return f"{backend}: {COOKIE_REFUSAL}"
    return None


def refused_here(tracers, backend: str) -> bool:
    """Where BACKEND cannot load on this platform, assert that the tracer refuses it at start-up,
    saying why, and return True (the caller's test then ends: what it checks needs BACKEND);
    elsewhere return False."""
    why = refusal(backend)
    if why is None:
        return False
    t = tracers.make(probe=backend)
    t.start(wait=False)
    assert t.proc.wait(timeout=600) == 1, "the tracer must exit at start-up"
    assert why in t.log_text(), t.log_text()[-2000:]
    print(f"{backend}: refused on kernel {os.uname().release}, as documented: {why}")
    return True
