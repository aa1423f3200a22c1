"""Build one suite's disk image: debootstrap, packages in a chroot, guest config, wheels, mkfs.ext4 -d.

Runs as root on the host, without the heavy-test lock (no VM, no kernel test). Every
step works in a scratch directory; the image appears under its final name only when
complete, so an interrupted build leaves no half image behind.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import mirror, recipe, suites, wheels

IMAGE_SIZE = "8G"
# virtio disk and 9p share must be in the initramfs for direct kernel boot
INITRAMFS_MODULES = ("9p", "9pnet", "9pnet_virtio", "virtio_blk", "virtio_net", "virtio_pci", "virtio_rng", "ext4")
GUEST_WHEELS = "/opt/callerid-wheels"
SHARE_TAG = "callerid"
SHARE_MOUNT = "/mnt/callerid"
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
              "LC_ALL": "C.UTF-8", "HOME": "/root"}


def log(msg: str) -> None:
    print(f"vm build: {msg}", file=sys.stderr, flush=True)


def run(*argv, **kw):
    return subprocess.run([str(a) for a in argv], check=True, **kw)


class Chroot:
    """proc/sys/dev mounted into rootfs, always unmounted again (mkfs -d must not copy them)."""

    def __init__(self, root: Path, apt_cache: Path):
        self.root = root
        self.binds = [("/dev", "dev"), ("/dev/pts", "dev/pts"), (str(apt_cache), "var/cache/apt/archives")]
        self.mounted: list[Path] = []

    def __enter__(self):
        self._mount(["-t", "proc", "proc"], "proc")
        self._mount(["-t", "sysfs", "sysfs"], "sys")
        for src, dst in self.binds:
            self._mount(["--bind", src], dst)
        return self

    def _mount(self, args, dst):
        target = self.root / dst
        target.mkdir(parents=True, exist_ok=True)
        run("mount", *args, target)
        self.mounted.append(target)

    def __exit__(self, *exc):
        for target in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)
        self.mounted.clear()

    def sh(self, script: str, **kw):
        return subprocess.run(["chroot", str(self.root), "/bin/sh", "-ec", script], env=CHROOT_ENV,
                              check=True, **kw)


def resolve(ch: Chroot, wanted: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(packages to install, entries the suite lacks and may skip); raises if a required one is missing."""
    names = sorted({n.lstrip("?") for w in wanted for n in w.split("|")})
    out = ch.sh("apt-cache policy " + " ".join(names) + " 2>/dev/null || true",
                capture_output=True, text=True).stdout
    have, current = set(), None
    for line in out.splitlines():
        if line and not line.startswith(" "):
            current = line.rstrip(":")
        elif "Candidate:" in line and "(none)" not in line and current:
            have.add(current)
    chosen, skipped, missing = [], [], []
    for w in dict.fromkeys(wanted):
        alts = w.split("|")
        hit = next((a.lstrip("?") for a in alts if a.lstrip("?") in have), None)
        if hit:
            chosen.append(hit)
        elif any(a.startswith("?") for a in alts) or w in recipe.setup_packages():
            skipped.append(w)   # setup.sh skips what the suite lacks, too
        else:
            missing.append(w)
    if missing:
        raise SystemExit(f"vm build: suite lacks required packages: {' '.join(missing)}")
    return sorted(set(chosen)), skipped


def configure(root: Path, r: recipe.Recipe) -> None:
    """Files that make the rootfs boot headless under qemu and let the runner in."""
    (root / "etc/hostname").write_text(f"cid-{r.suite.name}\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 cid-{r.suite.name}\n::1 localhost ip6-localhost\n")
    (root / "etc/fstab").write_text(
        "/dev/vda / ext4 rw,errors=remount-ro 0 1\n"
        f"{SHARE_TAG} {SHARE_MOUNT} 9p trans=virtio,version=9p2000.L,ro,msize=262144,nofail 0 0\n")
    (root / SHARE_MOUNT.lstrip("/")).mkdir(parents=True, exist_ok=True)
    net = root / "etc/systemd/network/10-qemu.network"
    net.parent.mkdir(parents=True, exist_ok=True)
    net.write_text("[Match]\nName=e*\n\n[Network]\nDHCP=ipv4\n")
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(r.ssh_pubkey + "\n")
    os.chmod(ssh / "authorized_keys", 0o600)
    # the runner exports these for every command (ssh passes no environment)
    (root / "etc/callerid-vm.env").write_text(f"CALLERID_WHEELS={GUEST_WHEELS}\nCALLERID_VM_SUITE={r.suite.name}\n")


def build(r: recipe.Recipe, force: bool = False) -> None:
    if r.built() and not force:
        log(f"{r.image} is current")
        return
    t0 = time.monotonic()
    work = recipe.CACHE / "build" / r.stem.name
    shutil.rmtree(work, ignore_errors=True)
    root = work / "rootfs"
    root.mkdir(parents=True)
    debs = recipe.CACHE / "debs" / r.suite.name
    debs.mkdir(parents=True, exist_ok=True)
    archive, _ = mirror.mirrors()
    try:
        log(f"wheels for Python {r.suite.python}")
        wheel_dir = work / "wheels"
        wheels.download(r.suite.python, list(r.requirements), wheel_dir)
        log(f"debootstrap {r.suite.name} from {archive}")
        run("debootstrap", "--variant=minbase", "--include=" + ",".join(suites.DEBOOTSTRAP_INCLUDE),
            f"--cache-dir={debs}", r.suite.name, root, archive, stdout=subprocess.DEVNULL)
        t_boot = time.monotonic()
        (root / "etc/apt/sources.list").write_text(mirror.sources_list(r.suite.name))
        (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")  # no daemon starts in the chroot
        os.chmod(root / "usr/sbin/policy-rc.d", 0o755)
        (root / "etc/initramfs-tools/modules").write_text("\n".join(INITRAMFS_MODULES) + "\n")
        with Chroot(root, debs) as ch:
            ch.sh("apt-get update -q >/dev/null")
            chosen, skipped = resolve(ch, r.packages)
            if skipped:
                log(f"{r.suite.name} lacks (skipped): {' '.join(skipped)}")
            log(f"installing {len(chosen)} packages")
            ch.sh("apt-get install -y -q --no-install-recommends " + " ".join(chosen) + " >/dev/null")
            configure(root, r)
            ch.sh("systemctl enable systemd-networkd ssh >/dev/null 2>&1")
            for unit in suites.NOT_AT_BOOT:
                ch.sh(f"systemctl disable {unit} >/dev/null 2>&1 || true")
            ch.sh("passwd -d root >/dev/null; update-initramfs -u -k all >/dev/null 2>&1")
            ch.sh("dpkg-query -W -f='${Package} ${Version}\\n' > /etc/callerid-vm.packages")
        os.remove(root / "usr/sbin/policy-rc.d")
        shutil.copytree(wheel_dir, root / GUEST_WHEELS.lstrip("/"))
        t_pkgs = time.monotonic()
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise SystemExit(f"vm build: expected one kernel and one initrd in /boot, found {kernels} {initrds}")
        tmp_img = work / "disk.img"
        run("truncate", "-s", IMAGE_SIZE, tmp_img)
        run("mkfs.ext4", "-q", "-F", "-L", "callerid-root", "-d", root, tmp_img)
        shutil.copy(kernels[0], work / "vmlinuz")
        shutil.copy(initrds[0], work / "initrd")
        r.image.parent.mkdir(parents=True, exist_ok=True)
        for old in r.image.parent.glob(f"{r.suite.name}-*"):
            old.unlink()  # one image per suite: an older recipe's files go
        os.replace(work / "vmlinuz", r.kernel)
        os.replace(work / "initrd", r.initrd)
        os.replace(tmp_img, r.image)
        t1 = time.monotonic()
        log(f"{r.image} built in {t1 - t0:.0f} s (debootstrap {t_boot - t0:.0f} s, packages+config "
            f"{t_pkgs - t_boot:.0f} s, mkfs {t1 - t_pkgs:.0f} s), kernel {kernels[0].name}")
    finally:
        for target in mounts_under(root):
            subprocess.run(["umount", "-l", target], check=False)
        if mounts_under(root):  # never delete through a bind mount of the host's /dev
            log(f"mounts left under {root}: not deleting {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def mounts_under(root: Path) -> list[str]:
    targets = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return sorted((t for t in targets if t == str(root) or t.startswith(f"{root}/")), reverse=True)
