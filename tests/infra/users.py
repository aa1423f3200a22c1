"""Non-root test users, created for a run and removed after it."""

from __future__ import annotations

import pwd
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str


def ensure(name: str, home: str | None = None) -> User:
    """Create the user if missing (a leftover from a killed run is reused)."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        args = ["useradd", "--shell", "/bin/bash", "--user-group"]
        args += ["--create-home", "--home-dir", home] if home else ["--no-create-home"]
        subprocess.run(args + [name], check=True, capture_output=True)
        pw = pwd.getpwnam(name)
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def remove(name: str) -> None:
    subprocess.run(["userdel", "--force", name], capture_output=True)
