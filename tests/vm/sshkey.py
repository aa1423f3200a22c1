"""The runner's ssh key: made once on the host, its public half baked into every image."""

from __future__ import annotations

import subprocess

from .recipe import SSH_KEY


def ensure() -> None:
    if not SSH_KEY.exists():
        SSH_KEY.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "callerid-vm", "-f", str(SSH_KEY)],
                       check=True)


def public_key() -> str:
    ensure()
    return SSH_KEY.with_suffix(".pub").read_text().strip()
