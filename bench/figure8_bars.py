#!/usr/bin/env python
"""Figure 8's per-site bars and ``arms.json`` over the groups of several runs of the figure (each run of
``bench/run.py --figures 8 --algorithm-seeds ... --algorithm-sites ...`` writes only its own groups).

    .venv/bin/python bench/figure8_bars.py --merge run-a/arms.json run-b/arms.json [--out bench/results/figure-8]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run by path: the ``bench`` package sits in the checkout
    sys.path.insert(0, str(ROOT))

from bench.figures.fig8_algorithms import main  # noqa: E402

if __name__ == "__main__":
    main()
