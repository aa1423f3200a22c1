"""The compiled pam_exec hook (adopter/hook.c) against a stand-in daemon on a unix socket.

These check the hook's own logic: what it sends (parsed by the daemon's real
parse_request), how it reads replies, its deadline and failure policy. That the hook
works under real sshd + PAM with the real daemon is tests/lab/test_adopter.py's job.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time

import pytest

from callerid.adopter.daemon import MAX_REQUEST, parse_request
from callerid.adopter.service import Reply
from tests.infra.sshd import hook_binary

GENERIC_DENY_TEXT = "Access denied by callerid: cannot determine the job of this session\n"


class StandIn:
    """Accepts one connection, records the request line, sends `reply` (bytes) or nothing."""

    def __init__(self, path: str, reply: bytes | None, hold: float = 0.0):
        self.path, self.reply, self.hold = path, reply, hold
        self.raw = b""
        self.done = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                while not self.raw.endswith(b"\n") and len(self.raw) <= MAX_REQUEST:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    self.raw += chunk
                if self.hold:
                    self.done.wait(self.hold)
                if self.reply is not None:
                    conn.sendall(self.reply)
            except OSError:
                pass

    def close(self):
        self.done.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes an accept() still waiting
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def hook():
    return hook_binary()


@pytest.fixture
def sockpath(tmp_path):
    return str(tmp_path / "adopter.sock")


def run(hook, args, env=None, timeout=15):
    base = {"PAM_USER": "alice", "PAM_SERVICE": "sshd", "PAM_TYPE": "account"}
    t = time.monotonic()
    r = subprocess.run([hook, *args], env=base if env is None else env, capture_output=True, timeout=timeout)
    return r, time.monotonic() - t


def reply(exit_code=0, message=None, verdict="allow") -> bytes:
    return Reply(verdict, exit_code, message).encode()   # what the daemon sends


def test_request_is_what_the_daemon_parses(hook, sockpath):
    d = StandIn(sockpath, reply())
    env = {"PAM_USER": 'a"b\\c\x01é', "PAM_SERVICE": "sshd-x", "PAM_TYPE": "account",
           "PAM_RHOST": "10.0.0.9", "LD_PRELOAD": "/evil.so", "CALLERID_PID": "1"}
    r, _ = run(hook, [f"socket={sockpath}", "action_unknown=deny", "bare", "odd=a\"b\\c\td=e", "deadline=3"], env)
    d.close()
    assert r.returncode == 0, r.stderr
    req = parse_request(d.raw)
    assert req == {"v": 1, "user": 'a"b\\c\x01é', "service": "sshd-x", "type": "account",
                   "options": {"action_unknown": "deny", "bare": "", "odd": 'a"b\\c\td=e'}}
    # only PAM_USER/PAM_SERVICE/PAM_TYPE are read; nothing else from the environment travels
    assert b"10.0.0.9" not in d.raw and b"evil" not in d.raw and b"CALLERID_PID" not in d.raw


def test_missing_pam_variables_are_empty_strings(hook, sockpath):
    d = StandIn(sockpath, reply())
    r, _ = run(hook, [f"socket={sockpath}"], env={})
    d.close()
    assert r.returncode == 0
    assert parse_request(d.raw) == {"v": 1, "user": "", "service": "", "type": "", "options": {}}


@pytest.mark.parametrize("code, expected", [(0, 0), (1, 1), (7, 1)])
def test_exit_code_follows_the_daemon(hook, sockpath, code, expected):
    d = StandIn(sockpath, reply(code, verdict="deny" if code else "allow"))
    r, _ = run(hook, [f"socket={sockpath}"])
    d.close()
    assert r.returncode == expected
    assert r.stdout == b""


def test_message_is_decoded_and_control_characters_defused(hook, sockpath):
    msg = 'Access denied: "job" é \U0001F600\nline two\t\x1b[31m\x07end'
    d = StandIn(sockpath, reply(1, msg, "deny"))
    r, _ = run(hook, [f"socket={sockpath}"])
    d.close()
    assert r.returncode == 1
    assert r.stdout.decode() == 'Access denied: "job" é \U0001F600\nline two\t?[31m?end\n'


@pytest.mark.parametrize("bad", [b"", b"garbage\n", b'{"v": 1, "verdict": "allow"}\n', b'{"exit": 0',
                                 b'{"exit": x}\n', b'{"exit": 0, "message": "unterminated}\n',
                                 b'{"exit": 0, "message": "bad \\q escape"}\n'],
                         ids=["empty", "garbage", "no-exit", "no-newline", "exit-not-a-number",
                              "unterminated-message", "bad-escape"])
@pytest.mark.parametrize("action, code", [("ignore", 0), ("allow", 0), ("deny", 1)])
def test_malformed_reply_applies_action_generic_failure(hook, sockpath, bad, action, code):
    d = StandIn(sockpath, bad)
    r, _ = run(hook, [f"socket={sockpath}", f"action_generic_failure={action}"])
    d.close()
    assert r.returncode == code
    assert f"action_generic_failure={action}" in r.stderr.decode()
    assert r.stdout.decode() == (GENERIC_DENY_TEXT if code else "")


@pytest.mark.parametrize("action, code", [("ignore", 0), ("deny", 1)])
def test_no_daemon_applies_action_generic_failure(hook, sockpath, action, code):
    r, took = run(hook, [f"socket={sockpath}", f"action_generic_failure={action}"])
    assert r.returncode == code
    assert "no daemon socket" in r.stderr.decode()
    assert took < 2


@pytest.mark.parametrize("deadline, expect", [("0.5", 0.5), ("0", 0.1), ("-3", 0.1), ("junk", 5.0)])
def test_silent_daemon_is_bounded_by_the_deadline(hook, sockpath, deadline, expect):
    d = StandIn(sockpath, None, hold=8)   # reads the request, never answers
    r, took = run(hook, [f"socket={sockpath}", f"deadline={deadline}", "action_generic_failure=deny"])
    d.close()
    assert r.returncode == 1
    assert r.stdout.decode() == GENERIC_DENY_TEXT
    assert expect * 0.9 <= took < expect + 1.0, took


def test_oversized_request_is_not_sent(hook, sockpath):
    d = StandIn(sockpath, reply())
    args = [f"socket={sockpath}", "action_generic_failure=deny"] + [f"opt{i}={'x' * 100}" for i in range(200)]
    r, _ = run(hook, args)
    d.close()
    assert r.returncode == 1
    assert "request too large" in r.stderr.decode()
    assert d.raw == b""


def test_socket_path_too_long_is_a_clean_failure(hook, tmp_path):
    r, _ = run(hook, [f"socket=/{'x' * 200}", "action_generic_failure=deny"])
    assert r.returncode == 1
    assert "socket path too long" in r.stderr.decode()


def test_hook_binary_is_hardened(hook):
    """Built as a PIE with full RELRO and the stack protector (scripts/build_hook.sh)."""
    out = subprocess.run(["readelf", "-h", "-d", "-s", "--wide", hook], capture_output=True, text=True,
                         check=True).stdout
    # binutils >= 2.37 says so in the header; older ones (Debian 11) call a PIE a shared
    # object and mark it PIE in the dynamic section's FLAGS_1.
    assert "DYN (Position-Independent Executable file)" in out or (
        "DYN (Shared object file)" in out and re.search(r"\(FLAGS_1\).*\bPIE\b", out))
    assert "BIND_NOW" in out or "FLAGS_1" in out and "NOW" in out
    assert os.stat(hook).st_mode & 0o022 == 0
