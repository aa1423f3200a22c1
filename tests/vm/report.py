"""Per-suite results of `vm.sh test`: times and each guest step's status, as one summary table."""

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import recipe

STEP = re.compile(r"^vm-step (\S+) rc=(\d+) secs=(\d+)$")


@dataclass
class TestRun:
    suite: str
    build_secs: float | None = None   # None: the cached image was current
    boot_secs: float | None = None
    test_secs: float | None = None
    rc: int = -1
    log: Path = field(init=False)

    def __post_init__(self):
        self.log = recipe.CACHE / "logs" / f"test-{self.suite}-{time.strftime('%Y%m%dT%H%M%S')}.log"

    def steps(self) -> list[tuple[str, int, int]]:
        if not self.log.exists():
            return []
        return [(m[1], int(m[2]), int(m[3])) for m in map(STEP.match, self.log.read_text(errors="replace").splitlines())
                if m]


def secs(v: float | None) -> str:
    return "cached" if v is None else f"{v:.0f}s"


def write_summary(runs: list[TestRun]) -> None:
    out = sys.stdout
    out.write("\nvm test summary\n")
    for r in runs:
        steps = " ".join(f"{n}={'ok' if rc == 0 else f'FAIL({rc})'}/{s}s" for n, rc, s in r.steps())
        out.write(f"  {r.suite:9} {'PASS' if r.rc == 0 else 'FAIL'}  build {secs(r.build_secs)}  boot "
                  f"{secs(r.boot_secs) if r.boot_secs is not None else '-'}  tests "
                  f"{secs(r.test_secs) if r.test_secs is not None else '-'}  {steps}\n")
        out.write(f"            log {r.log}\n")
    out.flush()
