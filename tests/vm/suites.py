"""The platforms of the VM tier: one Debian suite each, and the packages every image gets."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Suite:
    name: str       # Debian codename, also the debootstrap script name
    python: str     # the guest's /usr/bin/python3 version: host-side wheel downloads target it
    # -updates and -security on top of main; bullseye's are not fully served by the
    # mirror here (pool files 404 as of 2026-12-01: its LTS ended), so it is main only
    pockets: tuple[str, ...] = ("updates", "security")


SUITES = {
    "bookworm": Suite("bookworm", "3.11"),   # Debian 12: kernel 6.1, Slurm 22.05, OpenSSH 9.2
    "trixie": Suite("trixie", "3.13"),       # Debian 13: kernel 6.12, Slurm 24.11, OpenSSH 10
    "bullseye": Suite("bullseye", "3.9", pockets=()),    # Debian 11: kernel 5.10, Slurm 20.11, OpenSSH 8.4
}

# debootstrap's own resolver is simple: give it only the base, apt installs the rest.
DEBOOTSTRAP_INCLUDE = ("systemd-sysv", "udev", "dbus", "kmod", "initramfs-tools", "ca-certificates")

# On top of scripts/setup.sh's list (read from that file, so the guest's setup.sh finds
# everything installed and never needs a network). "a|b": the first that the suite has;
# a leading "?": skipped where the suite lacks it.
VM_PACKAGES = (
    "linux-image-amd64", "linux-headers-amd64",
    "systemd-sysv", "udev", "dbus", "libpam-systemd",  # a stock install's logind sessions (pam_systemd)
    "openssh-server", "python3-bpfcc|python3-bcc", "python3-venv", "python3-setuptools",
    "munge", "slurmctld", "slurmd", "slurm-client", "libpam-slurm-adopt",
    "gcc", "libc6-dev", "iproute2", "procps", "tar", "less",
    # the project's .deb (the `units` step installs it with apt, offline): its Depends
    "python3-prometheus-client", "?python3-tomli",
)

# Installed (package scripts enable them) but must not start at boot: tests start them.
# ssh stays enabled: it is how the runner enters the guest.
NOT_AT_BOOT = ("slurmd", "slurmctld", "munge", "prometheus", "prometheus-node-exporter",
               "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_reap",
               "fstrim.timer", "e2scrub_all.timer")


def get(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise SystemExit(f"vm: unknown suite {name!r} (known: {', '.join(SUITES)})") from None
