"""Which PAM applications the adopter serves: the socket's peer itself (pam_callerid.so runs
inside it), from a fake /proc tree."""

from __future__ import annotations

import pytest

from callerid.adopter import peer
from callerid.config import DEFAULT_PAM_APPLICATIONS, AdopterConfig


def stat_line(pid, comm, ppid):
    return f"{pid} ({comm}) S {ppid} " + " ".join(["0"] * 17 + ["100"] + ["0"] * 30) + "\n"


def status(uid):
    return f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n"


def make_proc(root, pid, ppid, comm, exe, uid=0):
    d = root / str(pid)
    (d / "ns").mkdir(parents=True)
    (d / "stat").write_text(stat_line(pid, comm, ppid))
    (d / "status").write_text(status(uid))
    (d / "cgroup").write_text("0::/\n")
    (d / "ns" / "net").write_text("")
    (d / "exe").symlink_to(exe)


def hook_under(tmp_path, parent_exe, parent_uid=0):
    """A fake /proc with the PAM application (pid 200) that connected to the socket."""
    make_proc(tmp_path, 200, 1, "sshd", parent_exe, parent_uid)
    return peer.Peer(pid=200, uid=0, gid=0)


@pytest.mark.parametrize("exe", ["/usr/sbin/sshd", "/usr/lib/openssh/sshd-session"])
def test_default_adopt_exe_serves_sshd_and_openssh_9_8_sshd_session(tmp_path, exe):
    # OpenSSH >= 9.8 (Debian 13) calls PAM from sshd-session, not sshd.
    who = hook_under(tmp_path, exe)
    app = peer.pam_application(who, tuple(AdopterConfig().adopt_exe), proc=str(tmp_path))
    assert app.pid == 200


def test_settings_default_is_the_config_default():
    from callerid.adopter.service import Settings
    assert Settings.allowed_exe == tuple(AdopterConfig().adopt_exe) == DEFAULT_PAM_APPLICATIONS


@pytest.mark.parametrize("exe", ["/usr/lib/openssh/sshd-auth", "/usr/bin/su", "/tmp/sshd-session-x"])
def test_other_parents_are_refused(tmp_path, exe):
    who = hook_under(tmp_path, exe)
    with pytest.raises(peer.PeerError, match="not one of sshd, sshd-session"):
        peer.pam_application(who, DEFAULT_PAM_APPLICATIONS, proc=str(tmp_path))


def test_non_root_parent_is_refused(tmp_path):
    who = hook_under(tmp_path, "/usr/lib/openssh/sshd-session", parent_uid=1000)
    with pytest.raises(peer.PeerError, match="not running as root"):
        peer.pam_application(who, DEFAULT_PAM_APPLICATIONS, proc=str(tmp_path))
