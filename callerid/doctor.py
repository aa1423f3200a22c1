"""`callerid doctor`: check what callerid needs from this machine and say what to fix."""

from __future__ import annotations

import glob
import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from . import config as cfgmod


@dataclass
class Check:
    name: str
    status: str   # ok, warn, fail
    detail: str
    fix: str = ""


def _mounted(path: str, fstype: str) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == path and line.split()[2] == fstype for line in f)
    except OSError:
        return False


def check_kernel() -> list[Check]:
    out = [Check("kernel", "ok", platform.release())]
    out.append(Check("root", "ok" if os.geteuid() == 0 else "fail", f"euid {os.geteuid()}",
                     "" if os.geteuid() == 0 else "run as root: loading BPF and reading every /proc/<pid>/fd needs it"))
    btf = os.path.exists("/sys/kernel/btf/vmlinux")
    out.append(Check("btf", "ok" if btf else "warn", "/sys/kernel/btf/vmlinux " + ("present" if btf else "missing"),
                     "" if btf else "fentry needs BTF; the tracepoint backend works without it"))
    tr = _mounted("/sys/kernel/tracing", "tracefs") or _mounted("/sys/kernel/debug/tracing", "tracefs")
    out.append(Check("tracefs", "ok" if tr else "fail", "mounted" if tr else "not mounted",
                     "" if tr else "mount -t tracefs nodev /sys/kernel/tracing"))
    bpffs = _mounted("/sys/fs/bpf", "bpf")
    out.append(Check("bpffs", "ok" if bpffs else "fail", "mounted" if bpffs else "not mounted",
                     "" if bpffs else "mount -t bpf bpf /sys/fs/bpf (pinned maps keep attribution across restarts)"))
    kp = any(os.path.exists(f"{d}/kprobe_events") for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"))
    out.append(Check("kprobes", "ok" if kp else "warn",
                     "kprobe_events " + ("present" if kp else "absent (CONFIG_KPROBES not set?)"),
                     "" if kp else "the kprobe backend cannot load; tracepoint is used instead"))
    build = Path(f"/lib/modules/{platform.release()}/build")
    ok = build.exists()
    out.append(Check("kernel headers", "ok" if ok else "fail",
                     f"{build} " + ("-> " + os.path.realpath(build) if ok else "missing"),
                     "" if ok else "install kernel headers (Debian: linux-headers-amd64, then link "
                                   "/lib/modules/$(uname -r)/{build,source}; scripts/setup.sh does it)"))
    return out


def check_cgroups(cgroup_root: str) -> list[Check]:
    v2_root = _mounted(cgroup_root, "cgroup2")
    v1 = [p for p in glob.glob(f"{cgroup_root}/*") if _mounted(p, "cgroup")]
    unified = _mounted(f"{cgroup_root}/unified", "cgroup2")
    kind = "v2" if v2_root else ("hybrid (v1 controllers + unified)" if unified else ("v1" if v1 else "none"))
    out = [Check("cgroups", "ok" if kind != "none" else "fail", kind,
                 "" if kind != "none" else "mount cgroup hierarchies")]
    return out


def check_munge(socket_path: str) -> list[Check]:
    from . import munge
    problem = munge.available(socket_path)
    return [Check("munge", "ok" if problem is None else "fail",
                  f"{socket_path}: " + (problem or "encode/decode round trip works"),
                  "" if problem is None else "start munged with the cluster's key (every node must share it)")]


def check_pam(services: list[str], pam_dir: str = "/etc/pam.d") -> list[Check]:
    """The sshd PAM stack: callerid's hook last in account, nothing ending the stack before it, no pam_systemd."""
    from . import pamstack
    out = []
    for service in services:
        if service == "*" or not os.path.exists(os.path.join(pam_dir, service)):
            continue
        found = pamstack.problems(pamstack.parse(service, pam_dir), pam_dir)
        if not found:
            out.append(Check(f"pam {service}", "ok", "callerid hook last in the account stack, no pam_systemd"))
        for p in found:
            out.append(Check(f"pam {service}", "fail", p.text, p.fix))
    return out


def run_checks(cfg, check_probes: Callable[[], list[Check]],
               check_slurm_layout: Callable[[str, str], list[Check]]) -> list[Check]:
    """check_probes is the tracer's (callerid.tracer.checks), check_slurm_layout the
    adopter's (callerid.adopter.checks): the CLI passes them in, so this core module
    depends on neither daemon's package."""
    return (check_kernel() + check_probes() + check_cgroups(cfg.adopter.cgroup_root)
            + check_slurm_layout(cfg.adopter.cgroup_root, cfg.common.node())
            + check_munge(cfg.common.munge_socket) + check_pam(list(cfg.adopter.service)))


def main(args, check_probes: Callable[[], list[Check]],
         check_slurm_layout: Callable[[str, str], list[Check]]) -> int:
    cfg = cfgmod.load(args.config)
    checks = run_checks(cfg, check_probes, check_slurm_layout)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=1))
    else:
        for c in checks:
            print(f"[{c.status:^4}] {c.name}: {c.detail}")
            if c.fix:
                print(f"       fix: {c.fix}")
    return 1 if any(c.status == "fail" for c in checks) else 0
