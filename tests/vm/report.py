"""Per-suite results of `vm.sh test`: times and each guest step's status, as one summary table."""

from __future__ import annotations  # tests/unit imports this on Python 3.9 too

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import recipe

STEP = re.compile(r"^vm-step (\S+) rc=(\d+) secs=(\d+)$")
# pytest -ra's short summary: one line per failed or erroring test
FAILED = re.compile(r"^(FAILED|ERROR) (tests/\S+)(?: - (.*))?")
# CI keeps only the end of what it printed: the summary names the failures, at most this many
MAX_FAILURES_SHOWN = 12
REASON_CHARS = 160
# in_guest.sh's own steps: a fresh boot runs them again, so they never count as done
INSTALL_STEPS = ("copy", "setup", "import")


@dataclass
class TestRun:
    suite: str
    build_secs: float | None = None   # None: the cached image was current
    boot_secs: float | None = None
    test_secs: float | None = None
    rc: int = -1
    panics: list[str] = field(default_factory=list)  # each guest kernel panic: its line and saved console
    log: Path = field(init=False)

    def __post_init__(self):
        self.log = recipe.CACHE / "logs" / f"test-{self.suite}-{time.strftime('%Y%m%dT%H%M%S')}.log"

    def steps(self) -> list[tuple[str, int, int]]:
        """Each step's latest result, in the order steps first ran (a retry after a panic runs
        the install steps again)."""
        if not self.log.exists():
            return []
        latest = {m[1]: (m[1], int(m[2]), int(m[3]))
                  for m in map(STEP.match, self.log.read_text(errors="replace").splitlines()) if m}
        return list(latest.values())


def failed_tests(log_text: str) -> list[str]:
    """'FAILED tests/...::name - reason' and 'ERROR ...' of pytest's short summaries in a guest
    log, each test once (its first report), in order, the reason cut short."""
    seen = {}
    for m in map(FAILED.match, log_text.splitlines()):
        if m and m[2] not in seen:
            reason = m[3] or ""
            cut = reason[:REASON_CHARS] + ("..." if len(reason) > REASON_CHARS else "")
            seen[m[2]] = f"{m[1]} {m[2]}" + (f" - {cut}" if cut else "")
    return list(seen.values())


def steps_left(requested: list[str], ended: list[tuple[str, int, int]]) -> list[str]:
    """The requested test steps that had not ended when the guest died, in their order."""
    done = {name for name, _, _ in ended if name not in INSTALL_STEPS}
    return [s for s in requested if s not in done]


def step_status(rc: int) -> str:
    # 125: in_guest.sh did not run the step (no installed callerid after setup)
    return "ok" if rc == 0 else "not-run" if rc == 125 else f"FAIL({rc})"


def secs(v: float | None) -> str:
    return "cached" if v is None else f"{v:.0f}s"


def write_summary(runs: list[TestRun]) -> None:
    out = sys.stdout
    out.write("\nvm test summary\n")
    for r in runs:
        steps = " ".join(f"{n}={step_status(rc)}/{s}s" for n, rc, s in r.steps())
        out.write(f"  {r.suite:9} {'PASS' if r.rc == 0 else 'FAIL'}  build {secs(r.build_secs)}  boot "
                  f"{secs(r.boot_secs) if r.boot_secs is not None else '-'}  tests "
                  f"{secs(r.test_secs) if r.test_secs is not None else '-'}  {steps}\n")
        out.write(f"            log {r.log}\n")
        for p in r.panics:
            out.write(f"            guest kernel panic, steps then run again on a fresh boot: {p}\n")
        failed = failed_tests(r.log.read_text(errors="replace")) if r.log.exists() else []
        for f in failed[:MAX_FAILURES_SHOWN]:
            out.write(f"            {f}\n")
        if len(failed) > MAX_FAILURES_SHOWN:
            out.write(f"            ... and {len(failed) - MAX_FAILURES_SHOWN} more in the log\n")
    out.flush()
