"""The tracer's findings for `callerid doctor`: can each probe backend load here?

The CLI passes check_probes to callerid.doctor, so the core never imports the tracer."""

from __future__ import annotations

import os
import shutil
import tempfile

from callerid.doctor import Check


def check_probes() -> list[Check]:
    try:
        from . import probes  # imports BCC
    except ImportError as exc:
        return [Check("bcc", "fail", f"cannot import BCC: {exc}",
                      "install python3-bpfcc (Debian/Ubuntu) or python3-bcc (RHEL) "
                      "and use a venv with --system-site-packages")]
    out = []
    root = tempfile.mkdtemp(prefix="callerid-doctor-", dir="/sys/fs/bpf") if os.path.isdir("/sys/fs/bpf") else None
    try:
        for backend in probes.BACKENDS:
            if root is None:
                out.append(Check(f"probe {backend}", "fail", "no bpffs", "mount bpffs"))
                continue
            try:
                p = probes.load(backend, root, max_conns=1024, max_pending=1024, max_closed=1024)
                p.close()
                out.append(Check(f"probe {backend}", "ok", f"loads and passes its self-test in {p.load_seconds:.2f}s"))
            except Exception as exc:  # noqa: BLE001 - report every failure as a finding
                out.append(Check(f"probe {backend}", "warn" if backend != "tracepoint" else "fail", str(exc)[:300],
                                 "" if backend != "tracepoint" else "callerid will answer from /proc only"))
    finally:
        if root:
            shutil.rmtree(root, ignore_errors=True)
    return out
