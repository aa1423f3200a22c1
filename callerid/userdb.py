"""User and group names, and which uids may sign callerid answers."""

import pwd


def user_name(uid: int | None) -> str:
    if uid is None:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def uid_of(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def trusted_uids(slurm_user: str) -> tuple[int, ...]:
    """Answers are signed by the tracer, which runs as root (or as SlurmUser)."""
    uid = uid_of(slurm_user)
    return (0,) if uid is None or uid == 0 else (0, uid)
