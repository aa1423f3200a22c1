"""An adopted session's X11 variables (issue 14, item 5), on a fake cgroup tree with a fake
slurmstepd answering REQUEST_X11_DISPLAY as Slurm 22.05 does: asked only where slurm.conf
has PrologFlags=X11, not with disable_x11=1; the lab test (tests/lab/test_slurm_x11.py) runs
the real thing."""

from __future__ import annotations

import os
import pwd
import struct
import time

import pytest

from callerid.adopter import policy, stepd
from callerid.adopter.metrics import AdopterMetrics
from callerid.adopter.service import Adopter, Settings
from tests.unit.test_jobs_discovery import FakeNode
from tests.unit.test_stepd import _serve_once

USER = "nobody"
JOB = 4311
XAUTH = b"/tmp/.Xauthority-Qx7"


@pytest.fixture
def node(tmp_path):
    n = FakeNode(tmp_path)
    n.v1_job(pwd.getpwnam(USER).pw_uid, JOB, node="n1")
    return n


def login(node, tmp_path, prolog_flags: str, options: dict) -> tuple[dict, bool]:
    """One adopted login; (the reply's environment, whether slurmstepd was asked)."""
    spool = tmp_path / "slurm" / "spool"
    spool.mkdir(parents=True)
    conf = tmp_path / "slurm" / "slurm.conf"
    conf.write_text(f"SlurmdSpoolDir={spool}\nPrologFlags={prolog_flags}\n")
    sock = stepd.socket_path(str(spool), "n1", str(JOB))
    reply = struct.pack("=ii", 12, len(XAUTH) + 1) + XAUTH + b"\0"
    server = _serve_once(sock, 38 << 8, 0, stepd.REQUEST_X11_DISPLAY, reply)
    s = Settings(nodename="n1", base_options=policy.Options(), rpc_port=1, rpc_timeout=1.0, munge_socket=None,
                 cgroup_root=str(node.root), v2_mount=str(node.v2), slurm_conf=str(conf))
    r = Adopter(s, AdopterMetrics()).handle(os.getpid(), USER, "sshd", options, time.monotonic() + 5)
    assert r is not None and r.verdict == "adopt", r
    server.join(timeout=1)
    asked = not server.is_alive()
    if not asked:   # let the fake slurmstepd finish its one exchange
        assert stepd.x11_display(sock, 1.0) is not None
        server.join(timeout=5)
    return r.env, asked


def test_session_gets_display_and_xauthority_from_slurmstepd(node, tmp_path):
    env, asked = login(node, tmp_path, "Contain,X11", {})
    assert asked
    assert env == {"DISPLAY": "localhost:12.0", "XAUTHORITY": XAUTH.decode()}


@pytest.mark.parametrize("flags, options", [("Contain", {}), ("Contain,X11", {"disable_x11": "1"})],
                         ids=["no-PrologFlags-X11", "disable_x11"])
def test_no_x11_variables_and_no_question_without_x11(node, tmp_path, flags, options):
    env, asked = login(node, tmp_path, flags, options)
    assert env == {} and not asked
