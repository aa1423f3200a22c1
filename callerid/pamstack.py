"""Read a PAM service file (following includes) and check it for what breaks adoption (pure)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

MODULE = "pam_callerid.so"


@dataclass(frozen=True)
class Rule:
    type: str      # account, session, auth, password
    control: str   # required, sufficient, [success=ok default=bad], ...
    module: str
    args: str
    source: str    # file:line, for messages
    via: str = ""  # file:line of the include line in the service's own file that brought it in


@dataclass(frozen=True)
class Problem:
    text: str
    fix: str


# Debian's pam-auth-update puts pam_systemd (and pam_mkhomedir) in common-session only
# ("Session-Interactive-Only: yes" in /usr/share/pam-configs/systemd);
# common-session-noninteractive has the rest of the session stack without it.
_DEBIAN_SESSION, _DEBIAN_SESSION_NOSYSTEMD = "common-session", "common-session-noninteractive"


def parse(service: str, pam_dir: str = "/etc/pam.d", _depth: int = 0) -> list[Rule]:
    """Rules of `service` in order, with @include, include and substack expanded."""
    path = service if os.path.isabs(service) else os.path.join(pam_dir, service)
    if _depth > 8:
        return []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    rules = []
    joined = []
    for line in lines:  # backslash continuations
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line
        else:
            joined.append(line)
    for n, line in enumerate(joined, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("@include"):
            rules += [replace(r, via=f"{path}:{n}")
                      for r in parse(line.split(None, 1)[1].strip(), pam_dir, _depth + 1)]
            continue
        m = re.match(r"(-?\w+)\s+(\[[^\]]*\]|\S+)\s+(\S+)\s*(.*)", line)
        if not m:
            continue
        typ, control, module, args = m.groups()
        typ = typ.lstrip("-")
        if control in ("include", "substack"):
            rules += [replace(r, via=f"{path}:{n}") for r in parse(module, pam_dir, _depth + 1) if r.type == typ]
            continue
        rules.append(Rule(typ, control, module, args, f"{path}:{n}"))
    return rules


def _skips_hook(control: str, index: int, hook: int) -> bool:
    """Can rule `index` end the stack, or jump past the hook at `hook`, on success?"""
    if control == "sufficient":
        return True
    if control.startswith("["):
        for item in control.strip("[]").split():
            key, _, value = item.partition("=")
            if key in ("success", "default", "ignore") and value == "done":
                return True
            if key == "success" and value.isdigit() and index + 1 + int(value) > hook:
                return True
    return False


def pam_systemd_fix(rule: Rule, pam_dir: str = "/etc/pam.d") -> str:
    """How to take this pam_systemd line out of the service's session stack (docs/INSTALL.md)."""
    if rule.via:
        path, _, line = rule.via.rpartition(":")
        included = os.path.basename(rule.source.rpartition(":")[0])
        alt = os.path.join(pam_dir, _DEBIAN_SESSION_NOSYSTEMD)
        if included == _DEBIAN_SESSION and os.path.exists(alt) and not any(
                os.path.basename(r.module) == "pam_systemd.so" for r in parse(alt, pam_dir)):
            return (f"in {path} line {line}, include {_DEBIAN_SESSION_NOSYSTEMD} instead of {_DEBIAN_SESSION} "
                    f"(sed -i 's/^@include {_DEBIAN_SESSION}$/@include {_DEBIAN_SESSION_NOSYSTEMD}/' {path}): "
                    "Debian's session stack without pam_systemd, other services keep theirs")
        return (f"{path} line {line} brings it in from {rule.source}: replace that include in {path} with "
                "the included lines minus pam_systemd.so, so other services keep theirs")
    path, _, line = rule.source.rpartition(":")
    return f"delete or comment out {path} line {line}"


def problems(rules: list[Rule], pam_dir: str = "/etc/pam.d") -> list[Problem]:
    """What in this stack keeps callerid from adopting sessions, each with its fix."""
    out = []
    for r in rules:
        if r.type == "session" and os.path.basename(r.module) == "pam_systemd.so":
            out.append(Problem(f"{r.source}: pam_systemd.so in the session stack moves sessions into a logind "
                               "scope, out of the job's cgroup", pam_systemd_fix(r, pam_dir)))
    account = [r for r in rules if r.type == "account"]
    hooks = [i for i, r in enumerate(account) if os.path.basename(r.module) == MODULE]
    layout = "see packaging/pam/sshd-account-callerid"
    if not hooks:
        out.append(Problem(f"the account stack has no callerid module ({MODULE})",
                           "add the lines of packaging/pam/sshd-account-callerid last in the account stack"))
        return out
    first = hooks[0]
    for i, r in enumerate(account[:first]):
        if _skips_hook(r.control, i, first):
            out.append(Problem(f"{r.source}: '{r.control} {r.module}' can end the account stack before callerid runs",
                               layout))
    if first != len(account) - 1:
        later = ", ".join(os.path.basename(r.module) for r in account[first + 1:])
        out.append(Problem(f"callerid is not last in the account stack (after it: {later}); a later module can "
                           "deny a session that is already adopted", layout))
    hook = account[first]
    if hook.control != "required" and not hook.control.startswith("["):
        out.append(Problem(f"{hook.source}: use 'required' for {MODULE}, not '{hook.control}'", layout))
    return out
