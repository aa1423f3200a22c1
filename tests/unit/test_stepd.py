"""adopter/stepd.py: where slurmstepd listens, and the client side of its uid and X11 exchanges."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading

import pytest

from callerid.adopter import stepd
from tests.helpers import require


@pytest.fixture(autouse=True)
def _root():
    # slurmstepd's socket is root's, and extern_uid refuses any other: these make root's sockets.
    require(os.getuid() == 0, "root (the sockets under test must be root's, as slurmstepd's are)")


def test_spool_dir_from_slurm_conf_expands_node_and_host():
    text = "ClusterName=x\n# SlurmdSpoolDir=/nope\nslurmdspooldir=/var/spool/slurmd/%n  # per node\n"
    assert stepd.spool_dir(text, "node7", "host7") == "/var/spool/slurmd/node7"
    assert stepd.spool_dir("SlurmdSpoolDir=/s/%h\n", "n", "h") == "/s/h"


def test_spool_dir_default_is_slurms_builtin():
    assert stepd.spool_dir("ClusterName=x\n", "n", "h") == stepd.DEFAULT_SPOOL


@pytest.mark.parametrize("text, x11", [
    ("PrologFlags=Contain,X11\n", True),
    ("prologflags=x11  # forwarding\n", True),
    ("PrologFlags=contain\n", False),
    ("# PrologFlags=X11\nPrologFlags=Alloc\n", False),
    ("PrologFlags=X11\nPrologFlags=Contain\n", False),     # the last setting wins
    ("ClusterName=x\n", False),
    ("PrologFlags=contain\ninclude /etc/slurm/more.conf\n", True),   # may be set there: ask
])
def test_may_forward_x11_only_with_prologflags_x11(text, x11):
    assert stepd.may_forward_x11(text) is x11


def test_socket_path_names_the_extern_step_and_refuses_non_numeric_ids():
    assert stepd.socket_path("/sp", "n1", "42") == "/sp/n1_42.4294967292"
    assert stepd.socket_path("/sp", "n1", "a1b2c3") is None    # a SLUID: no socket by that name


def _serve_once(path: str, reply_version: int, uid: int | None, request: int = stepd.REQUEST_STEP_UID,
                reply: bytes | None = None) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        with conn, srv:
            (req,) = struct.unpack("=i", conn.recv(4))
            assert req >= 38 << 8
            conn.sendall(struct.pack("=i", reply_version))
            if reply_version < 0 or uid is None:
                return
            (what,) = struct.unpack("=i", conn.recv(4))
            assert what == request
            conn.sendall(struct.pack("=I", uid) if reply is None else reply)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _with_server(reply_version: int, uid: int | None, timeout: float = 2.0) -> int | None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "n_1.4294967292")
        t = _serve_once(path, reply_version, uid)
        got = stepd.extern_uid(path, timeout)
        t.join(timeout=5)
        return got


def test_extern_uid_reads_the_steps_uid():
    assert _with_server(42 << 8, 1234) == 1234


def test_extern_uid_none_when_the_stepd_refuses_or_hangs_up():
    assert _with_server(-1, None) is None
    assert _with_server(42 << 8, None, timeout=0.5) is None


def test_extern_uid_none_for_a_missing_socket():
    assert stepd.extern_uid("/nonexistent/n_1.4294967292", 0.1) is None


def test_extern_uid_refuses_a_socket_root_does_not_own():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        os.chown(path, 65534, 65534)
        with srv:
            assert stepd.extern_uid(path, 0.1) is None


def _x11(reply: bytes) -> stepd.X11 | None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "n_1.4294967292")
        t = _serve_once(path, 38 << 8, 0, stepd.REQUEST_X11_DISPLAY, reply)
        got = stepd.x11_display(path, 0.5)
        t.join(timeout=5)
        return got


def _display_reply(display: int, xauthority: bytes | None) -> bytes:
    """As Slurm 22.05's _handle_x11_display writes it: the length counts the path's NUL."""
    if xauthority is None:
        return struct.pack("=ii", display, 0)
    return struct.pack("=ii", display, len(xauthority) + 1) + xauthority + b"\0"


def test_x11_display_with_a_temporary_xauthority_file():
    x = _x11(_display_reply(12, b"/tmp/.Xauthority-AbC123"))
    assert x == stepd.X11(12, "/tmp/.Xauthority-AbC123")
    assert x.environment() == {"DISPLAY": "localhost:12.0", "XAUTHORITY": "/tmp/.Xauthority-AbC123"}


def test_x11_display_without_an_xauthority_file_sets_display_only():
    x = _x11(_display_reply(10, None))
    assert x == stepd.X11(10) and x.environment() == {"DISPLAY": "localhost:10.0"}


@pytest.mark.parametrize("reply", [
    _display_reply(0, None),                                  # no X11 forwarding in this job
    struct.pack("=i", 10),                                    # cut short: no length
    struct.pack("=ii", 10, 99999) + b"/x",                    # absurd length
    struct.pack("=ii", 10, 20) + b"/tmp/short",               # fewer bytes than promised
], ids=["none", "no-length", "absurd-length", "truncated"])
def test_x11_display_none_when_there_is_none_or_the_reply_is_garbled(reply):
    assert _x11(reply) is None


def test_x11_display_ignores_an_xauthority_that_is_not_an_absolute_path():
    assert _x11(_display_reply(11, b"relative")) == stepd.X11(11)
