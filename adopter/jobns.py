"""join_container: the job's mount namespace (Slurm job_container/tmpfs), found and checked.

job_container/tmpfs pins each job's mount namespace at BasePath[/<node>]/<jobid>/.ns
(../shared/REFERENCE.md); pam_callerid.so, running inside sshd, setns()es into it. The
daemon names the file only after checking it is what Slurm made: under the BasePath of
job_container.conf, every directory on the way owned by root and writable by no one
else, no symlinks, and a mount namespace (ioctl NS_GET_NSTYPE).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

NS_GET_NSTYPE = 0xB703   # linux/nsfs.h _IO(0xb7, 0x3)
CLONE_NEWNS = 0x00020000


class NamespaceError(Exception):
    """The job's namespace file exists but is not one we may join."""


def base_path(conf_text: str, nodename: str) -> str | None:
    """BasePath for `nodename` from job_container.conf text: a line naming the node
    (NodeName=a,b) wins over the global one; None if there is none."""
    glob = node = None
    for line in conf_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        kv = {}
        for tok in line.split():
            k, sep, v = tok.partition("=")
            if sep:
                kv[k.lower()] = v
        if "basepath" not in kv:
            continue
        if "nodename" in kv:
            if nodename in kv["nodename"].split(","):
                node = kv["basepath"]
        else:
            glob = kv["basepath"]
    chosen = node or glob
    return chosen if chosen and os.path.isabs(chosen) else None


def candidates(base: str, nodename: str, job_id: str) -> list[str]:
    """Where Slurm pins the namespace: with the node's name (multiple-slurmd builds, as
    Debian's) or without."""
    return [os.path.join(base, nodename, str(job_id), ".ns"), os.path.join(base, str(job_id), ".ns")]


def _check_dir_chain(base: str, path: str) -> None:
    d = os.path.dirname(path)
    chain = [d]
    while d != base:
        d = os.path.dirname(d)
        if len(d) < len(base):
            raise NamespaceError(f"{path} is not under {base}")
        chain.append(d)
    for p in chain:
        st = os.lstat(p)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise NamespaceError(f"{p} is not a directory owned and writable only by root")


def namespace_of(base: str, nodename: str, job_id: str) -> str | None:
    """The checked path of the job's namespace file, or None if the job has none."""
    base = os.path.normpath(base)
    for path in candidates(base, nodename, job_id):
        try:
            st = os.lstat(path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            raise NamespaceError(f"{path}: {exc}") from exc
        if os.path.realpath(path) != path:
            raise NamespaceError(f"{path} goes through a symlink")
        _check_dir_chain(base, path)
        if st.st_uid != 0 or stat.S_ISLNK(st.st_mode):
            raise NamespaceError(f"{path} is not owned by root")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError as exc:
            raise NamespaceError(f"{path} is not a namespace file ({exc.strerror})") from exc
        finally:
            os.close(fd)
        if kind != CLONE_NEWNS:
            raise NamespaceError(f"{path} is a namespace of type {kind:#x}, not a mount namespace")
        return path
    return None
