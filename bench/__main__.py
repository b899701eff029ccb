"""Entry point: ``python -m bench [--only NAME ...] [--rounds N] [--quick]``."""

from __future__ import annotations

import sys

from bench import FIGURE_ORDER, PLANNED_FIGURES
from bench.harness import main

if __name__ == "__main__":
    sys.exit(main(order=FIGURE_ORDER, planned=PLANNED_FIGURES))
