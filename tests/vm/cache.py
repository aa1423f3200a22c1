"""The image cache, shared by every checkout on this machine: one build per suite at a time,
images of other recipes (other branches' worktrees) kept while they are being used."""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .recipe import CACHE, Recipe

UNUSED_DAYS = 2  # an image not booted for this long is deleted by the next build of its suite


@contextmanager
def build_lock(suite: str):
    """Builds of one suite share its package cache (apt's lock) and must not race on a recipe."""
    path = CACHE / "locks" / f"build-{suite}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"vm build: waiting for another {suite} build ({path})", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def mounts_under(root: Path) -> list[str]:
    targets = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return sorted((t for t in targets if t == str(root) or t.startswith(f"{root}/")), reverse=True)


def remove_tree(path: Path) -> bool:
    """rm -rf that never descends into a mount (a chroot's bind of the host's /dev)."""
    if mounts_under(path):
        print(f"vm build: mounts left under {path}: not deleting it", file=sys.stderr, flush=True)
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def work_dir(r: Recipe) -> Path:
    """A fresh scratch dir for this build; scratch dirs of interrupted builds of the suite go
    (we hold the suite's build lock, so none of them is in use)."""
    base = CACHE / "build"
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob(f"{r.suite.name}-*"):
        remove_tree(old)
    work = base / f"{r.stem.name}-{os.getpid()}"
    work.mkdir()
    return work


def mark_used(r: Recipe) -> None:
    os.utime(r.image)


def prune(r: Recipe) -> None:
    """Delete this suite's images of other recipes not booted for UNUSED_DAYS."""
    cutoff = time.time() - UNUSED_DAYS * 86400
    for img in r.image.parent.glob(f"{r.suite.name}-*.img"):
        if img != r.image and img.stat().st_mtime < cutoff:
            for part in (img, img.with_suffix(".vmlinuz"), img.with_suffix(".initrd")):
                part.unlink(missing_ok=True)
