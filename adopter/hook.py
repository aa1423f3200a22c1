"""pam_exec hook: ask the adopter daemon, enforce the deadline, map its verdict to an exit code.

Runs for every ssh login, so it imports only the standard library's smallest
modules and trusts nothing in its environment beyond PAM_USER, PAM_SERVICE and
PAM_TYPE. pam_exec waits for it forever: the deadline here is what bounds a login.

PAM line (account stack, last):
  account required pam_exec.so stdout quiet /opt/callerid/venv/bin/python3 -I -m adopter.hook [name=value ...]
Arguments: any pam_slurm_adopt option (action_no_jobs=..., action_unknown=..., ...) plus
  socket=PATH      the adopter daemon's unix socket (default /run/callerid/adopter.sock)
  deadline=SECS    total time allowed (default 5)
pam_exec turns any non-zero exit into an error, so "ignore" and "allow" exit 0 and
"deny" exits 1 (see adopter/policy.py pam_exit_code).
"""

import json
import os
import signal
import socket
import sys
import time

DEFAULT_SOCKET = "/run/callerid/adopter.sock"
GENERIC = {"ignore": 0, "allow": 0, "deny": 1}
HOOK_OPTIONS = ("socket", "deadline")


def _fail(action: str, why: str) -> "NoReturn":  # noqa: F821
    """Apply action_generic_failure: the daemon could not be asked."""
    code = GENERIC.get(action, 0)
    try:
        sys.stderr.write(f"callerid: adopter unavailable ({why}); action_generic_failure={action}\n")
        if code:
            sys.stdout.write("Access denied by callerid: cannot determine the job of this session\n")
        sys.stdout.flush()
    finally:
        os._exit(code)


def parse_args(argv: list[str]) -> tuple[dict, dict]:
    hook, options = {"socket": DEFAULT_SOCKET, "deadline": "5"}, {}
    for arg in argv:
        name, sep, value = arg.partition("=")
        if not sep:
            options[name] = ""  # passed on: the daemon warns about it, like pam_slurm_adopt
        elif name in HOOK_OPTIONS:
            hook[name] = value
        else:
            options[name] = value
    return hook, options


def main(argv: list[str]) -> int:
    hook, options = parse_args(argv)
    generic = options.get("action_generic_failure", "ignore")
    try:
        deadline = max(0.1, float(hook["deadline"]))
    except ValueError:
        deadline = 5.0
    end = time.monotonic() + deadline
    # Backstop: whatever blocks (a stuck daemon, a signal-deaf syscall), the login goes on.
    signal.signal(signal.SIGALRM, lambda *_: _fail(generic, f"deadline of {deadline:g}s passed"))
    signal.setitimer(signal.ITIMER_REAL, deadline)

    request = {
        "v": 1,
        "user": os.environ.get("PAM_USER", ""),
        "service": os.environ.get("PAM_SERVICE", ""),
        "type": os.environ.get("PAM_TYPE", ""),
        "options": options,
    }
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(max(0.01, end - time.monotonic()))
        s.connect(hook["socket"])
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n") and len(buf) < 65536:
            s.settimeout(max(0.01, end - time.monotonic()))
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        s.close()
        reply = json.loads(buf)
        code = int(reply["exit"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _fail(generic, f"{type(exc).__name__}: {exc}")
    signal.setitimer(signal.ITIMER_REAL, 0)
    message = reply.get("message")
    if message:
        sys.stdout.write(str(message) + "\n")
        sys.stdout.flush()
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
