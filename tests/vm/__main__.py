"""scripts/vm.sh's implementation: build SUITE | run SUITE -- CMD | shell SUITE | test [SUITE...] | ci."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from . import image, recipe, suites
from .guest import Guest, announce_boot
from .machine import Machine, note, panic_reason, sigterm_as_interrupt
from .report import INSTALL_STEPS, TestRun, steps_left, write_summary

GUEST_TIER = f"{image.SHARE_MOUNT}/tests/vm/in_guest.sh"
DEFAULT_STEPS = "unit,smoke"
MAX_PANICS = 1  # a second panic in one suite fails it: that is no longer a rare emulator race

# What CI runs (scripts/test.sh after the host suite; docs/VM.md): every image's probe
# backends (smoke); on Debian 12 and 13 the README's first command, the demo, under systemd
# and cgroup v2 (real Slurm 22.05 / 24.11; on 13 through OpenSSH 10's sshd-session); on
# Debian 12 the .deb's systemd units (last: it installs a package and edits the system's PAM
# stack). Not bookworm's `unit`: the host suite has just run tests/unit on Debian 12.
# Not the kernel tier nor the lab: on the machine of 2026-12-02 emulation ran at half the
# speed of the day before (a BCC compile 75-88 s, not 33-45 s; the lab 1757 s, not 809-857 s),
# so Debian 12's kernel tier alone would take about 50 of CI's 90 minutes. They run with
# `vm.sh test SUITE --steps kernel,lab`, dated results in docs/VM.md and the README's matrix.
CI_PLAN = (
    ("bookworm", "smoke,demo,units"),
    ("trixie", "smoke,demo"),
    ("bullseye", "smoke"),
)


def cmd_build(a) -> int:
    for name in a.suites:
        image.build(recipe.for_suite(name), force=a.force)
    return 0


def ensure_image(name: str) -> recipe.Recipe:
    r = recipe.for_suite(name)
    if not r.built():
        image.build(r)
    return r


def cmd_run(a) -> int:
    r = ensure_image(a.suite)
    with Machine(r) as m:
        g = Guest(m)
        announce_boot(g)
        return g.run(a.command, tty=a.shell)


def build_deb() -> None:
    """The `units` step installs the project's .deb (docs/INSTALL.md): built here, on the host,
    with Debian's tooling into build/, which the guest sees in the shared checkout."""
    note("units: building the .deb on the host (scripts/build_deb.sh)")
    r = subprocess.run(["bash", str(recipe.REPO / "scripts" / "build_deb.sh")], check=False)
    if r.returncode != 0:
        raise RuntimeError(f"scripts/build_deb.sh exited {r.returncode}")


def run_suite(name: str, steps: str) -> TestRun:
    run = TestRun(name)
    t0 = time.monotonic()
    todo = steps.split(",")
    try:
        r = recipe.for_suite(name)
        if not r.built():
            image.build(r)
            run.build_secs = time.monotonic() - t0
        if "units" in todo:
            build_deb()
        run.log.parent.mkdir(parents=True, exist_ok=True)
        note(f"{name}: guest output also in {run.log}")
        requested = todo
        while True:
            rc, panic = boot_and_run(r, todo, run)
            todo = steps_left(requested, run.steps())
            if panic is None or not todo or len(run.panics) == MAX_PANICS:
                break
            # A panicking guest kernel is not a test result: under TCG a jump-label patch can
            # race the other vCPU (docs/VM.md). The steps that ended keep their results.
            run.panics.append(panic)
            note(f"{name}: guest kernel panic ({panic}); steps {','.join(todo)} again on a fresh boot")
            with open(run.log, "a") as out:
                out.write(f"=== guest kernel panic: {panic}\n")
        if panic is not None:
            run.panics.append(panic)
        # the steps' own results decide (the last boot's install steps included); a panic
        # after every step had ended changes none of them
        ended = {n: step_rc for n, step_rc, _ in run.steps()}
        ok = all(ended.get(s) == 0 for s in (*INSTALL_STEPS, *requested)) and (panic is None or not todo)
        run.rc = 0 if ok else (rc or 1)
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        note(f"{name}: {exc}")
        run.rc = 255
    return run


def boot_and_run(r: recipe.Recipe, steps: list[str], run: TestRun) -> tuple[int, str | None]:
    """One boot on a fresh overlay running STEPS; (exit status, the panic's reason or None).
    A panicked guest's console is kept beside the run's log."""
    with Machine(r) as m:
        g = Guest(m)
        boot = announce_boot(g)
        run.boot_secs = boot if run.boot_secs is None else run.boot_secs + boot
        t1 = time.monotonic()
        rc = g.run(["bash", GUEST_TIER, *steps], tee=run.log)
        run.test_secs = (run.test_secs or 0) + time.monotonic() - t1
        m.stop()
        panic = panic_reason(m.console())
        if panic is not None:
            kept = run.log.with_suffix(f".panic{len(run.panics) + 1}.serial.log")
            kept.write_text(m.console())
            panic = f"{panic}; console {kept}"
    return rc, panic


def finish(runs: list) -> int:
    write_summary(runs)
    return 0 if all(r.rc == 0 for r in runs) else 1


def cmd_test(a) -> int:
    names = [suites.get(n).name for n in a.suites] or list(suites.SUITES)
    return finish([run_suite(name, a.steps) for name in names])


def cmd_ci(a) -> int:
    t0 = time.monotonic()
    runs = []
    for name, steps in CI_PLAN:
        note(f"ci: {name} --steps {steps}")
        runs.append(run_suite(name, steps))
    note(f"ci: VM tier took {time.monotonic() - t0:.0f} s")
    return finish(runs)


def main(argv=None) -> int:
    sigterm_as_interrupt()
    p = argparse.ArgumentParser(prog="scripts/vm.sh", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or confirm current) the image of each SUITE")
    b.add_argument("suites", nargs="+", choices=list(suites.SUITES), metavar="SUITE")
    b.add_argument("--force", action="store_true", help="rebuild even if the recipe is unchanged")
    b.set_defaults(func=cmd_build)
    r = sub.add_parser("run", help="boot SUITE, run CMD as root in the guest, stop; exit with CMD's status")
    r.add_argument("suite", choices=list(suites.SUITES), metavar="SUITE")
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD")
    r.set_defaults(func=cmd_run, shell=False)
    s = sub.add_parser("shell", help="boot SUITE and open a root shell in the guest")
    s.add_argument("suite", choices=list(suites.SUITES), metavar="SUITE")
    s.set_defaults(func=cmd_run, shell=True, command=[])
    t = sub.add_parser("test", help="run the tier's steps in each SUITE (default: all)")
    t.add_argument("suites", nargs="*", metavar="SUITE")
    t.add_argument("--steps", default=DEFAULT_STEPS,
                   help="comma-separated: unit, smoke, kernel, demo, lab, units, or a test path")
    t.set_defaults(func=cmd_test)
    c = sub.add_parser("ci", help="what CI runs: " + "; ".join(f"{n} {st}" for n, st in CI_PLAN))
    c.set_defaults(func=cmd_ci)
    a = p.parse_args(argv)
    if getattr(a, "command", None) and a.command[0] == "--":
        a.command = a.command[1:]
    try:
        return a.func(a)
    except KeyboardInterrupt:
        note("interrupted; VM stopped and overlay removed")
        return 130


if __name__ == "__main__":
    sys.exit(main())
