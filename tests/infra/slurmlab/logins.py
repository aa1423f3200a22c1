"""Logging in to the lab: test users with ssh keys for each other, and per node two sshds, one whose
PAM account stack ends with pam_callerid.so and one ending with Slurm's pam_slurm_adopt.

A mixin of SlurmLab."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from ..sshd import keygen, pam_service_lines, pam_stack
from .config import (
    PAM_DIR,
    PSA_CANDIDATES,
    PSA_PORT,
    SSH_PORT,
    USERS,
    Node,
    known_hosts_text,
    pam_psa_text,
    ssh_client_config_text,
    sshd_config_text,
)
from .slurm import LabError


class Logins:
    def _users(self) -> None:
        """Test users with ssh keys for each other, host keys, known_hosts and ~/.ssh/config."""
        home_root = self.root / "home"
        home_root.mkdir(mode=0o755)
        for name in USERS:
            try:
                pwd.getpwnam(name)
                subprocess.run(["userdel", "--force", name], capture_output=True, timeout=30)  # a leftover
            except KeyError:
                pass
            self.state["users"].append(name)
            self._save()
            r = subprocess.run(["useradd", "--shell", "/bin/bash", "--user-group", "--create-home", "--home-dir",
                                str(home_root / name), name], capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                raise LabError(f"useradd {name}: {r.stderr.strip()}")
            self.users.pop(name, None)
            self.user(name)
        keys, hostkeys, auth = self.root / "keys", self.root / "hostkeys", self.root / "ssh" / "authorized"
        for d in (keys, hostkeys, auth):
            d.mkdir(parents=True, mode=0o755)
        os.chmod(auth.parent, 0o755)
        for name in (*USERS, "root"):
            keygen(keys / name)
            (auth / name).write_text((keys / f"{name}.pub").read_text())
            os.chmod(auth / name, 0o644)
        for n in self.nodes:
            keygen(hostkeys / n.name)
        pubs = {n.name: " ".join((hostkeys / f"{n.name}.pub").read_text().split()[:2]) for n in self.nodes}
        (self.root / "known_hosts").write_text(known_hosts_text(self.nodes, pubs))
        for name in USERS:
            u = self.user(name)
            d = u.ssh_dir
            d.mkdir(mode=0o700, exist_ok=True)
            for owner in USERS:
                dst = u.key_of(owner)
                shutil.copy(keys / owner, dst)
                if owner == name:
                    shutil.copy(keys / f"{owner}.pub", f"{dst}.pub")
            (d / "known_hosts").write_text((self.root / "known_hosts").read_text())
            (d / "config").write_text(ssh_client_config_text(self.nodes))
            for p in [d, *d.iterdir()]:
                os.chown(p, u.uid, u.gid)
                if p != d:
                    os.chmod(p, 0o600)

    def pam_psa_text(self, node, *options: str) -> str:
        n = self.node(node)
        module = next(p for p in PSA_CANDIDATES if os.path.exists(p))
        return pam_psa_text(module, self.psa_service(n), n.name, list(options))

    def pam_cidlab_text(self, node, *args: str) -> str:
        n = self.node(node)
        args = list(args)
        if not any(a.startswith("service=") for a in args):
            args.insert(0, f"service={self.cidlab_service(n)}")
        return pam_stack(args, self.adopter_socket(n))

    def set_hook(self, node, *args: str) -> None:
        """Rewrite node's callerid PAM line with these hook arguments (PAM re-reads the file at each login)."""
        (PAM_DIR / self.cidlab_service(node)).write_text(self.pam_cidlab_text(node, *args))

    def set_psa(self, node, *options: str) -> None:
        """Rewrite node's pam_slurm_adopt line with these options (service= and nodename= are added if absent)."""
        (PAM_DIR / self.psa_service(node)).write_text(self.pam_psa_text(node, *options))

    def _start_sshds(self, n: Node) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        for service, port, text in ((self.cidlab_service(n), SSH_PORT, self.pam_cidlab_text(n)),
                                    (self.psa_service(n), PSA_PORT, self.pam_psa_text(n, "log_level=debug"))):
            d = self.root / n.name / service
            d.mkdir(mode=0o755)
            pam = PAM_DIR / service
            self.state["files"].append(str(pam))
            self._save()
            pam.write_text(text)
            cfg = d / "sshd_config"
            cfg.write_text(sshd_config_text(port, self.root / "hostkeys" / n.name, d, self.root / "ssh" / "authorized",
                                            self.conf, tuple(pam_service_lines(service))))
            # sshd's PAM service name: its program name (OpenSSH < 10), else PAMServiceName above
            link = self.root / "bin" / service
            link.symlink_to("/usr/sbin/sshd")
            self._spawn(service, [str(link), "-D", "-e", "-f", str(cfg)], n, n.name)

