"""Regenerate the generated docs (docs/CONFIG.md) from the code."""

from pathlib import Path

from callerid import config

root = Path(__file__).resolve().parent.parent
(root / "docs" / "CONFIG.md").write_text(config.reference() + "\n")
