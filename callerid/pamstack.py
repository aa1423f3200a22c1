"""Read a PAM service file (following includes) and check it for what breaks adoption (pure)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MODULE = "pam_callerid.so"


@dataclass(frozen=True)
class Rule:
    type: str      # account, session, auth, password
    control: str   # required, sufficient, [success=ok default=bad], ...
    module: str
    args: str
    source: str    # file:line, for messages


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
            rules += parse(line.split(None, 1)[1].strip(), pam_dir, _depth + 1)
            continue
        m = re.match(r"(-?\w+)\s+(\[[^\]]*\]|\S+)\s+(\S+)\s*(.*)", line)
        if not m:
            continue
        typ, control, module, args = m.groups()
        typ = typ.lstrip("-")
        if control in ("include", "substack"):
            rules += [r for r in parse(module, pam_dir, _depth + 1) if r.type == typ]
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


def problems(rules: list[Rule]) -> list[str]:
    """What in this stack keeps callerid from adopting sessions."""
    out = []
    for r in rules:
        if r.type == "session" and os.path.basename(r.module) == "pam_systemd.so":
            out.append(f"{r.source}: pam_systemd.so in the session stack moves sessions into a logind scope, "
                       "out of the job's cgroup; remove it")
    account = [r for r in rules if r.type == "account"]
    hooks = [i for i, r in enumerate(account) if os.path.basename(r.module) == MODULE]
    if not hooks:
        out.append(f"the account stack has no callerid module ({MODULE})")
        return out
    first = hooks[0]
    for i, r in enumerate(account[:first]):
        if _skips_hook(r.control, i, first):
            out.append(f"{r.source}: '{r.control} {r.module}' can end the account stack before callerid runs")
    if first != len(account) - 1:
        later = ", ".join(os.path.basename(r.module) for r in account[first + 1:])
        out.append(f"callerid is not last in the account stack (after it: {later}); a later module can deny "
                   "a session that is already adopted")
    hook = account[first]
    if hook.control != "required" and not hook.control.startswith("["):
        out.append(f"{hook.source}: use 'required' for {MODULE}, not '{hook.control}'")
    return out
