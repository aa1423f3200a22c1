"""pam_callerid.so under the real Linux-PAM (pam_start_confdir, no sshd), against a stand-in
daemon on a unix socket that sends lines made by the daemon's own encoder.

These check the module's own behaviour: return codes per verdict (policy.pam_return), what
the user is told (the texts of docs/DECISIONS.md and nothing else), the PAM environment,
its deadline and action_generic_failure. With real sshd and the real daemon:
tests/lab/test_pam_callerid.py."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from callerid.adopter import pamwire, policy
from callerid.adopter.pamwire import Reply
from tests.helpers import require
from tests.infra.sshd import pam_build

SERVICE = "callerid-unit"


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
                while not self.raw.endswith(b"\n") and len(self.raw) <= pamwire.MAX_LINE:
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
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)


class Result:
    def __init__(self, out: str, seconds: float):
        self.seconds = seconds
        self.rc = ""
        self.errors: list[str] = []
        self.infos: list[str] = []
        self.env: dict[str, str] = {}
        self.groups: list[int] = []
        for line in out.splitlines():
            tag, _, hexed = line.partition(" ")
            if tag == "rc":
                self.rc = hexed
                continue
            if tag == "groups":
                self.groups = [int(g) for g in hexed.split(",") if g]
                continue
            if tag == "setcred":
                continue
            text = bytes.fromhex(hexed).decode()
            if tag == "error":
                self.errors.append(text)
            elif tag == "info":
                self.infos.append(text)
            elif tag == "env":
                k, _, v = text.partition("=")
                self.env[k] = v


@pytest.fixture(scope="module")
def build():
    require(os.geteuid() == 0, "root (the module trusts only a root-owned daemon socket)")
    return pam_build()


@pytest.fixture
def sockpath(tmp_path):
    os.chmod(tmp_path, 0o700)
    return str(tmp_path / "adopter.sock")


def run_pam(build: Path, tmp_path: Path, args: list[str], user: str = "alice", timeout: float = 20) -> Result:
    conf = tmp_path / "pam.d"
    conf.mkdir(exist_ok=True)
    (conf / SERVICE).write_text("account required pam_permit.so\n")   # the handle's own stack is not run
    t0 = time.monotonic()
    r = subprocess.run([str(build / "callerid-pam-harness"), str(conf), SERVICE, user, str(build / "pam_callerid.so"),
                        *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return Result(r.stdout, time.monotonic() - t0)


@pytest.mark.parametrize("verdict", [v.value for v in policy.PAM_RETURN])
def test_return_code_is_policys_pam_return(build, tmp_path, sockpath, verdict):
    msg = policy.MSG_UNKNOWN if verdict == "deny" else ""
    d = StandIn(sockpath, Reply(verdict, "x", msg).encode())
    r = run_pam(build, tmp_path, [f"socket={sockpath}"])
    d.close()
    assert r.rc == policy.pam_return(policy.Verdict(verdict))
    assert r.errors == ([policy.MSG_UNKNOWN] if verdict == "deny" else [])
    assert r.infos == []


def test_request_carries_user_service_and_options_but_not_the_modules_own(build, tmp_path, sockpath):
    d = StandIn(sockpath, Reply("allow", "x").encode())
    run_pam(build, tmp_path, [f"socket={sockpath}", "deadline=3", "action_unknown=deny", "log_level=debug", "bare"],
            user="bob")
    d.close()
    req = pamwire.parse_request(d.raw)
    assert (req.user, req.service) == ("bob", SERVICE)
    assert req.options == {"action_unknown": "deny", "log_level": "debug", "bare": ""}


def test_adoption_sets_slurm_job_id_and_the_jobs_variables(build, tmp_path, sockpath):
    rep = Reply("adopt", "single_job", job_id="4242", env={"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_GPUS": "0,1"})
    d = StandIn(sockpath, rep.encode())
    r = run_pam(build, tmp_path, [f"socket={sockpath}"])
    d.close()
    assert r.rc == "PAM_SUCCESS"
    assert r.env == {"SLURM_JOB_ID": "4242", "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_GPUS": "0,1"}


def run_stacks(build: Path, tmp_path: Path, sockpath: str) -> Result:
    """Through libpam's own dispatch, as sshd: account, then setcred on the auth stack."""
    conf = tmp_path / "pam.d"
    conf.mkdir(exist_ok=True)
    module = f"{build / 'pam_callerid.so'} socket={sockpath}"
    (conf / SERVICE).write_text(f"auth optional {module}\naccount required pam_permit.so\naccount required {module}\n")
    r = subprocess.run([str(build / "callerid-pam-harness"), str(conf), SERVICE, "alice", "-"], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    return Result(r.stdout, 0)


def test_setcred_adds_the_jobs_group_after_an_adoption(build, tmp_path, sockpath):
    d = StandIn(sockpath, Reply("adopt", "single_job", job_id="7", group=64123).encode())
    r = run_stacks(build, tmp_path, sockpath)
    d.close()
    assert (r.rc, r.groups, r.env) == ("PAM_SUCCESS", [64123], {"SLURM_JOB_ID": "7"})


@pytest.mark.parametrize("verdict", ["allow", "ignore", "deny"])
def test_no_group_unless_adopted(build, tmp_path, sockpath, verdict):
    d = StandIn(sockpath, Reply(verdict, "x", group=64123).encode())
    r = run_stacks(build, tmp_path, sockpath)
    d.close()
    assert r.groups == []


@pytest.mark.parametrize("verdict", ["allow", "ignore", "deny"])
def test_no_environment_unless_adopted(build, tmp_path, sockpath, verdict):
    # a reply that (wrongly) names a job without adopting must not set SLURM_JOB_ID
    d = StandIn(sockpath, Reply(verdict, "x", job_id="9", env={"CUDA_VISIBLE_DEVICES": "0"}).encode())
    r = run_pam(build, tmp_path, [f"socket={sockpath}"])
    d.close()
    assert r.env == {}


def test_message_control_characters_never_reach_the_terminal(build, tmp_path, sockpath):
    d = StandIn(sockpath, Reply("deny", "x", "denied\n\x1b[31mred\x07").encode())
    r = run_pam(build, tmp_path, [f"socket={sockpath}"])
    d.close()
    assert r.rc == "PAM_PERM_DENIED"
    assert r.errors == ["denied??[31mred?"]


GENERIC = {"ignore": ("PAM_IGNORE", []), "allow": ("PAM_SUCCESS", []),
           "deny": ("PAM_PERM_DENIED", [policy.MSG_GENERIC])}


@pytest.mark.parametrize("bad", [b"", b"garbage\n", b"v=1 verdict=maybe\n", b"v=1 verdict=allow",
                                 b'{"v": 1, "verdict": "allow", "exit": 0}\n'],
                         ids=["empty", "garbage", "bad-verdict", "no-newline", "json"])
@pytest.mark.parametrize("action", list(GENERIC))
def test_malformed_reply_applies_action_generic_failure(build, tmp_path, sockpath, bad, action):
    d = StandIn(sockpath, bad)
    r = run_pam(build, tmp_path, [f"socket={sockpath}", f"action_generic_failure={action}"])
    d.close()
    assert (r.rc, r.errors) == GENERIC[action]   # the documented text, nothing internal


@pytest.mark.parametrize("action", list(GENERIC))
def test_no_daemon_applies_action_generic_failure_at_once(build, tmp_path, sockpath, action):
    r = run_pam(build, tmp_path, [f"socket={sockpath}", f"action_generic_failure={action}"])
    assert (r.rc, r.errors) == GENERIC[action]
    assert r.seconds < 2


def test_daemon_socket_anyone_could_have_made_is_not_trusted(build, tmp_path, sockpath):
    os.chmod(tmp_path, 0o777)   # anyone could have put this socket here
    d = StandIn(sockpath, Reply("allow", "x").encode())
    r = run_pam(build, tmp_path, [f"socket={sockpath}", "action_generic_failure=deny"])
    d.close()
    assert (r.rc, r.errors) == GENERIC["deny"]
    assert d.raw == b""   # not even asked


@pytest.mark.parametrize("deadline, expect", [("0.5", 0.5), ("1.5", 1.5), ("0", 5.0), ("junk", 5.0)])
def test_silent_daemon_is_bounded_by_the_deadline(build, tmp_path, sockpath, deadline, expect):
    d = StandIn(sockpath, None, hold=8)   # reads the request, never answers
    r = run_pam(build, tmp_path, [f"socket={sockpath}", f"deadline={deadline}", "action_generic_failure=deny"])
    d.close()
    assert (r.rc, r.errors) == GENERIC["deny"]
    assert expect * 0.9 <= r.seconds < expect + 1.0, r.seconds


def test_full_backlog_is_bounded_by_the_deadline(build, tmp_path, sockpath):
    """A daemon that never accepts: connect() itself would block once the backlog is full."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sockpath)
    srv.listen(0)
    fillers = []
    try:
        for _ in range(8):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(sockpath)
            except BlockingIOError:
                c.close()
                break
            fillers.append(c)
        r = run_pam(build, tmp_path, [f"socket={sockpath}", "deadline=0.7", "action_generic_failure=deny"])
    finally:
        for c in fillers:
            c.close()
        srv.close()
    assert (r.rc, r.errors) == GENERIC["deny"]
    assert 0.6 <= r.seconds < 1.7, r.seconds


def test_oversized_request_is_not_sent(build, tmp_path, sockpath):
    d = StandIn(sockpath, Reply("allow", "x").encode())
    args = [f"socket={sockpath}", "action_generic_failure=deny"] + [f"opt{i}={'x' * 100}" for i in range(200)]
    r = run_pam(build, tmp_path, args)
    d.close()
    assert (r.rc, r.errors) == GENERIC["deny"]
    assert d.raw == b""


def test_module_texts_are_policys():
    """The two texts the module can show by itself are the documented ones (docs/DECISIONS.md)."""
    src = (Path(__file__).resolve().parents[2] / "adopter" / "pam" / "pam_callerid.c").read_text()
    assert f'#define MSG_GENERIC "{policy.MSG_GENERIC}"' in src
    assert f'#define MSG_ADOPT_FAILED "{policy.MSG_ADOPT_FAILED}"' in src


def test_module_is_hardened_and_exports_only_pams_entry_points(build):
    so = str(build / "pam_callerid.so")
    out = subprocess.run(["readelf", "-h", "-d", "-l", "--wide", so], capture_output=True, text=True, check=True).stdout
    assert "DYN (Shared object file)" in out
    assert "BIND_NOW" in out or ("FLAGS_1" in out and "NOW" in out)
    assert "GNU_RELRO" in out
    syms = subprocess.run(["nm", "-D", "--defined-only", so], capture_output=True, text=True, check=True).stdout
    assert sorted(line.split()[-1] for line in syms.splitlines()) == [
        "pam_sm_acct_mgmt", "pam_sm_authenticate", "pam_sm_setcred"]
    assert os.stat(so).st_mode & 0o022 == 0
