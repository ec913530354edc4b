"""Figure 3, bundle peer: ``clara-fl train`` vs ``python -m monai.bundle run`` on bench/bundle (the same training
as a MONAI bundle), whole process; goal: wall ratio <= 1.00."""

from __future__ import annotations

import importlib.util

from bench.figures.standalone_runs import Pair, same_training, standalone_pairs
from bench.harness.comparison import median
from bench.harness.figure import Context, Figure
from bench.harness.records import Record


def bundle_record(pairs: list[Pair]) -> Record:
    ratios = [p["clara-fl"].wall_s / p["monai-bundle"].wall_s for p in pairs]
    value = median(ratios)
    cli = (
        "python -m monai.bundle run"
        if importlib.util.find_spec("fire")
        else "monai.bundle.scripts.run (bench/bundle_run.py: fire not installed)"
    )
    return Record(
        figure="3 bundle peer",
        measure="wall time, whole process (clara-fl train / MONAI bundle run)",
        baseline=f"{cli} on bench/bundle",
        kind="ratio",
        value=value,
        unit="x",
        goal="<= 1.00",
        met=value is not None and value <= 1.0,
        samples=[round(r, 4) for r in ratios],
        detail={
            "bundle_wall_s": [round(p["monai-bundle"].wall_s, 3) for p in pairs],
            "same_training": same_training(pairs, "clara-fl", "monai-bundle"),
        },
    )


def measure(ctx: Context) -> list[Record]:
    return [bundle_record(standalone_pairs(ctx))]


FIGURE = Figure("3", "bundle peer", measure)
