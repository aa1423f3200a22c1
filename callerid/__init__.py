"""callerid: which Slurm job opened this TCP connection, and adopt ssh sessions into it."""

from __future__ import annotations

__version__ = "0.1.0"
