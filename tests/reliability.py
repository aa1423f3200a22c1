"""What the reliability tests held, in their own words: each records one row when its
assertions have passed; scripts/gen_reliability.py turns the rows into docs/RELIABILITY.md.

Rows go to build/reliability.jsonl (or $CALLERID_RELIABILITY_OUT), one JSON object a line;
a later row for the same test replaces an earlier one when the document is generated."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("CALLERID_RELIABILITY_OUT", ROOT / "build" / "reliability.jsonl"))
KINDS = ("load", "fault", "input")


def record(test: str, kind: str, what: str, held: str, lost: str = "nothing") -> None:
    """kind: load held, fault survived or inputs tried; what: the scenario and its size;
    held: the outcome the test asserted (with the numbers it measured); lost: what was lost."""
    assert kind in KINDS, kind
    OUT.parent.mkdir(parents=True, exist_ok=True)
    row = {"test": test, "kind": kind, "what": what, "held": held, "lost": lost,
           "at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    with open(OUT, "a") as f:
        f.write(json.dumps(row) + "\n")
