"""docs/RELIABILITY.md is generated (scripts/gen_reliability.py): its fixed part, the design
text above the tables, must be the generator's, and every table row must name its test."""

from __future__ import annotations

from pathlib import Path

from scripts import gen_reliability

DOC = Path(__file__).resolve().parents[2] / "docs" / "RELIABILITY.md"


def test_fixed_part_is_the_generators():
    assert DOC.read_text().startswith(gen_reliability.render([])), \
        "docs/RELIABILITY.md is stale or hand-edited: run .venv/bin/python3 scripts/gen_reliability.py"


def test_every_row_names_its_test():
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ") and "`" in line]
    assert rows and all(line.count(" | ") == 4 and "::" in line.split(" | ")[3] for line in rows)
