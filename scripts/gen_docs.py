"""Regenerate the generated docs (docs/CONFIG.md, docs/DECISIONS.md, the metrics reference in docs/OPERATIONS.md)
and the packaged default configuration (packaging/callerid.toml) from the code."""

from __future__ import annotations

from pathlib import Path

import gen_operations  # scripts/gen_operations.py: this script's directory is on sys.path

from callerid import config
from callerid.adopter import decision_table

root = Path(__file__).resolve().parent.parent
(root / "docs" / "CONFIG.md").write_text(config.reference() + "\n")
(root / "packaging" / "callerid.toml").write_text(config.sample())
(root / "docs" / "DECISIONS.md").write_text(decision_table.render_markdown())
gen_operations.main()
