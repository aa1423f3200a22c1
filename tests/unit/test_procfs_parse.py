"""procfs parsing on hand-written text and a fake /proc tree (no root needed)."""

from __future__ import annotations

import os

import pytest

from callerid.linux import procfs

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_line(pid, comm, ppid, starttime):
    # Fields 3..52 of proc(5); only ppid (4) and starttime (22) matter here.
    fields = ["S", str(ppid)] + ["0"] * 17 + [str(starttime)] + ["0"] * 30
    return f"{pid} ({comm}) " + " ".join(fields) + "\n"


STATUS = """Name:\tsleep
Umask:\t0022
State:\tS (sleeping)
Tgid:\t{pid}
Pid:\t{pid}
PPid:\t1
Uid:\t1000\t1001\t1002\t1003
Gid:\t2000\t2001\t2002\t2003
Groups:\t
"""

CGROUP = "12:freezer:/slurm_n1/uid_1000/job_7/step_extern\n0::/\n"


def make_proc(root, pid, comm="sleep", ppid=1, starttime=12345, fds=None):
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "ns").mkdir()
    (d / "stat").write_text(stat_line(pid, comm, ppid, starttime))
    (d / "status").write_text(STATUS.format(pid=pid))
    (d / "cgroup").write_text(CGROUP)
    (d / "ns" / "net").write_text("")
    for fd, target in (fds or {}).items():
        os.symlink(target, d / "fd" / str(fd))
    return d


@pytest.mark.parametrize("comm", ["sleep", "a) b (c", "x)", "((", ") )", "two  spaces", ""])
def test_parse_stat_nasty_comm(comm):
    assert procfs.parse_stat(stat_line(42, comm, 7, 999)) == (42, comm, 7, 999)


def test_parse_stat_real_self():
    with open("/proc/self/stat") as f:
        pid, comm, ppid, start = procfs.parse_stat(f.read())
    assert pid == os.getpid() and ppid == os.getppid() and start > 0
    assert comm


def test_parse_status_ids():
    assert procfs.parse_status_ids(STATUS.format(pid=1)) == (1000, 1001, 2000)
    with pytest.raises(ValueError):
        procfs.parse_status_ids("Name:\tx\n")


def test_proc_info_fake_tree(tmp_path):
    d = make_proc(tmp_path, 321, comm="a) b (c", ppid=5, starttime=4 * CLK_TCK + 1)
    info = procfs.proc_info(321, proc=str(tmp_path))
    assert info.pid == 321 and info.ppid == 5
    assert (info.uid, info.euid, info.gid) == (1000, 1001, 2000)
    assert info.comm == "a) b (c"
    assert info.start_boot_ns == 4_000_000_000 + 1_000_000_000 // CLK_TCK
    assert info.cgroup_text == CGROUP
    assert info.netns == os.stat(d / "ns" / "net").st_ino


@pytest.mark.parametrize("missing", ["", "stat", "status", "cgroup", "ns/net"])
def test_proc_info_gone(tmp_path, missing):
    d = make_proc(tmp_path, 9)
    if missing:
        os.unlink(d / missing)
    pid = 9 if missing else 10
    with pytest.raises(procfs.ProcessGone):
        procfs.proc_info(pid, proc=str(tmp_path))
    assert issubclass(procfs.ProcessGone, LookupError)


def test_socket_inodes(tmp_path):
    make_proc(tmp_path, 50, fds={0: "/dev/null", 3: "socket:[123]", 4: "socket:[456]",
                                 5: "pipe:[789]", 6: "/tmp/socket:[1]", 7: "anon_inode:[eventfd]"})
    assert procfs.socket_inodes(50, proc=str(tmp_path)) == {123, 456}
    with pytest.raises(procfs.ProcessGone):
        procfs.socket_inodes(51, proc=str(tmp_path))


def test_pids_by_socket_inode(tmp_path):
    make_proc(tmp_path, 300, fds={3: "socket:[1]", 4: "socket:[2]"})
    make_proc(tmp_path, 20, fds={3: "socket:[1]"})
    make_proc(tmp_path, 1000, fds={3: "socket:[3]", 4: "socket:[1]"})
    (tmp_path / "self").mkdir()          # non-numeric entries are ignored
    (tmp_path / "77").mkdir()            # a process whose fd dir vanished
    root = str(tmp_path)
    assert procfs.pids_by_socket_inode(proc=root) == {1: [20, 300, 1000], 2: [300], 3: [1000]}
    assert procfs.pids_by_socket_inode({2, 3, 99}, proc=root) == {2: [300], 3: [1000]}
    # Early stop: once inode 1 is seen (pid 20) the scan ends.
    assert procfs.pids_by_socket_inode({1}, proc=root) == {1: [20]}
    assert procfs.find_pid_for_inode(1, proc=root) == 20
    assert procfs.find_pid_for_inode(3, proc=root) == 1000
    assert procfs.find_pid_for_inode(99, proc=root) is None


def test_same_start():
    tick = 1_000_000_000 // CLK_TCK
    info = procfs.ProcInfo(1, 0, 0, 0, 0, "x", 10 * tick, "", 1)
    assert procfs.same_start(info, 10 * tick)
    assert procfs.same_start(info, 10 * tick + 5)
    assert procfs.same_start(info, 9 * tick)        # within one tick of slack
    assert not procfs.same_start(info, 9 * tick - 1)
    assert not procfs.same_start(info, 0)


def test_boottime_and_own_netns():
    a = procfs.boottime_ns()
    assert 0 < a <= procfs.boottime_ns()
    assert procfs.own_netns_inode() == os.stat("/proc/self/ns/net").st_ino


def test_own_process_start_is_past():
    info = procfs.proc_info(os.getpid())
    assert procfs.same_start(info, procfs.boottime_ns())
    assert info.uid == os.getuid() and info.gid == os.getgid()
