"""A real OpenSSH sshd per test host, with its own PAM service running pam_callerid.so.

Up to OpenSSH 9.x sshd takes its PAM service name from its program name, so each instance
runs through a symlink with a unique name and gets /etc/pam.d/<that name>; OpenSSH 10
(Debian 13) names it by the PAMServiceName option instead (default "sshd", whatever the
program is called), so the config sets it too where sshd knows it (pam_service_lines).
The system's own /etc/pam.d/sshd is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import pace
from .netns import Netns
from .procs import stop_pid, wait_for

SSHD = "/usr/sbin/sshd"
REPO = Path(__file__).resolve().parents[2]


def knows_pam_service_name(sshd: str = SSHD) -> bool:
    """Does this sshd have the PAMServiceName option (OpenSSH 10)? Its keyword table is in the binary."""
    with open(sshd, "rb") as f:
        return b"pamservicename" in f.read()


def pam_service_lines(service: str, sshd: str = SSHD) -> list[str]:
    """sshd_config lines that make `service` the PAM service: none where the program name does it."""
    return [f"PAMServiceName {service}"] if knows_pam_service_name(sshd) else []
BUILD = REPO / "build"


def pam_build() -> Path:
    """build/ with pam_callerid.so and its harnesses, (re)built from adopter/pam/ if stale."""
    subprocess.run(["bash", str(REPO / "scripts" / "build_pam.sh"), str(BUILD)], check=True,
                   capture_output=True, timeout=180)
    return BUILD


def pam_module() -> str:
    return str(pam_build() / "pam_callerid.so")


def pam_stack(module_args: list[str], adopter_socket: str) -> str:
    """account: pam_unix then pam_callerid.so, last (as pam_slurm_adopt must be). No pam_systemd."""
    line = " ".join([pam_module(), f"socket={adopter_socket}", *module_args])
    return "\n".join([
        "# written by callerid tests; removed when they end",
        "auth     required pam_unix.so",
        f"auth     optional {pam_module()} socket={adopter_socket}",   # setcred: the job's group
        "account  required pam_unix.so",
        f"account  required {line}",
        "session  required pam_unix.so",
        "",
    ])


def pam_stack_slurm_adopt(options: list[str]) -> str:
    return "\n".join([
        "auth     required pam_unix.so",
        "account  required pam_unix.so",
        "account  required pam_slurm_adopt.so " + " ".join(options),
        "session  required pam_unix.so",
        "",
    ])


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)


@dataclass
class Sshd:
    name: str            # unique: also the PAM service name
    dir: Path
    netns: Netns | None
    port: int = 22
    pam_text: str = ""
    proc: subprocess.Popen | None = None
    pam_file: Path = field(init=False)

    def __post_init__(self):
        self.pam_file = Path("/etc/pam.d") / self.name

    def start(self, authorized: dict[str, list[str]]):
        """authorized: user name -> public key lines."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        keys = self.dir / "authorized"
        keys.mkdir(exist_ok=True)
        os.chmod(keys, 0o755)
        for user, lines in authorized.items():
            (keys / user).write_text("\n".join(lines) + "\n")
            os.chmod(keys / user, 0o644)
        hostkey = self.dir / "host_ed25519"
        if not hostkey.exists():
            keygen(hostkey)
        cfg = self.dir / "sshd_config"
        cfg.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 0.0.0.0", "ListenAddress ::",
            f"HostKey {hostkey}", f"PidFile {self.dir}/sshd.pid",
            "UsePAM yes", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
            f"AuthorizedKeysFile {keys}/%u", "StrictModes no", "LogLevel VERBOSE",
            "UseDNS no", "PrintMotd no", "PrintLastLog no", "AcceptEnv none",
            # the default (10:30:100) drops concurrent unauthenticated connections at random:
            # the concurrency tests measure callerid, not sshd's throttle
            "MaxStartups 256", f"LoginGraceTime {pace.scaled_int(120)}",  # 120: sshd's default
            *pam_service_lines(self.name), "",
        ]))
        self.pam_file.write_text(self.pam_text)
        link = self.dir / self.name
        if not link.exists():
            link.symlink_to(SSHD)
        argv = [str(link), "-D", "-e", "-f", str(cfg)]
        if self.netns:
            argv = self.netns.argv(argv)
        self.log = self.dir / "sshd.log"
        self._logf = open(self.log, "ab")  # noqa: SIM115 - sshd's stdout until it is stopped
        self.proc = subprocess.Popen(argv, stdout=self._logf, stderr=subprocess.STDOUT)
        wait_for(lambda: "Server listening" in self.log.read_text(errors="replace") or self.proc.poll() is not None,
                 15, f"sshd {self.name} to listen")
        if self.proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {self.log.read_text()[-2000:]}")
        return self

    def stop(self):
        if self.proc:
            stop_pid(self.proc.pid)
            self.proc.wait(5)
            self._logf.close()
            self.proc = None
        if self.pam_file.exists():
            self.pam_file.unlink()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def ssh_argv(key: Path, user: str, host: str, command: str, port: int = 22, timeout: int = 10) -> list[str]:
    # LogLevel INFO: sshd sends PAM account messages (the deny text) as a banner,
    # which the client prints only at INFO or above.
    return ["ssh", "-F", "none", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=INFO",
            "-o", f"ConnectTimeout={pace.scaled_int(timeout)}", "-o", "IdentitiesOnly=yes", f"{user}@{host}", command]
