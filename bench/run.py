#!/usr/bin/env python
"""clara-fl's benchmark suite: every figure side by side with a named baseline, in one run.

    make bench                                   # the full suite (about 15-25 minutes on 2 CPU cores)
    .venv/bin/python bench/run.py --quick        # tiny settings, one pair (the smoke test's mode)
    .venv/bin/python bench/run.py --figures 1,2,3 --pairs 3

Every timing is an A/B comparison made in the same run: the two sides alternate (A B, B A, ...),
each pair gives a ratio or a difference, and the verdict is the median over the pairs, never an
absolute time. The table goes to stdout, the records to ``bench/results/latest.json``.

Figures (goals for a 2-core CPU machine), each measured by its module in bench/figures/ (its docstring says how),
on the shared harness in bench/harness/:

1. standalone overhead   fig1_standalone.py      ``clara-fl train`` / hand-written script, wall: <= 1.05
2. start-up              fig2_startup.py         first iteration vs the hand-written script: <= +0.3 s;
                                                 ``--help`` and ``job create`` import no torch/MONAI/ignite/FLARE
3. bundle peer           fig3_bundle_peer.py     ``clara-fl train`` / ``monai.bundle run``: <= 1.00
4. FL round overhead     fig4_round_overhead.py  per round, wall minus local training: <= 0.5 s, <= 0.5 x MONAI's
5. memory                fig5_memory.py          site RSS growth per round: <= 1 MB (peak RSS vs MONAI reported)
6. FL quality            fig6_fl_quality.py      FedAvg / centralized final val_mean_dice: >= 0.97
7. GPU throughput        fig7_gpu.py             only where a GPU is present
8. algorithms            fig8_algorithms.py      identical / differing sites, six FL algorithms, the same budget
9. homomorphic encryption fig9_he.py             round time with --he / without: <= 2.0; bytes sent per round
10. sites per machine    fig10_scale.py          2 / 4 / 8 simulated sites: round time and peak RSS sum (reported)
11. robust aggregation   fig11_robust.py         one bad site of 3: each --aggregator rule within 0.05 Dice of
                                                 FedAvg on the 2 honest sites, plain FedAvg > 0.3 below it

Figures 1-3 share one set of runs (bench/figures/standalone_runs.py), as do 4-5 (bench/figures/fedavg_runs.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run by path (``python bench/run.py``): the ``bench`` package sits in the checkout
    sys.path.insert(0, str(ROOT))

from bench.figures import FIGURES  # noqa: E402
from bench.harness.suite import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(__doc__.splitlines()[0], FIGURES))
