"""python -m tests.infra.slurmlab up [--nodes N] [--keep-on-failure] | down | status [--json]"""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
