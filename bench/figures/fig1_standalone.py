"""Figure 1, standalone overhead: ``clara-fl train`` vs the same training written by hand
(bench/handwritten_train.py), whole process, import included; goal: wall ratio <= 1.05. The same ratio in CPU
time (user + system) is reported beside it."""

from __future__ import annotations

from bench.figures.standalone_runs import Pair, same_training, standalone_pairs
from bench.harness.comparison import median
from bench.harness.figure import Context, Figure
from bench.harness.records import Record


def wall_record(pairs: list[Pair]) -> Record:
    ratios = [p["clara-fl"].wall_s / p["hand-written"].wall_s for p in pairs]
    cpu = [p["clara-fl"].cpu_s / p["hand-written"].cpu_s for p in pairs]
    value = median(ratios)
    return Record(
        figure="1 standalone overhead",
        measure="wall time, whole process (clara-fl train / hand-written MONAI script)",
        baseline="bench/handwritten_train.py",
        kind="ratio",
        value=value,
        unit="x",
        goal="<= 1.05",
        met=value is not None and value <= 1.05,
        samples=[round(r, 4) for r in ratios],
        detail={
            "clara_wall_s": [round(p["clara-fl"].wall_s, 3) for p in pairs],
            "hand_wall_s": [round(p["hand-written"].wall_s, 3) for p in pairs],
            "cpu_ratio_median": median(cpu),
            "same_training": same_training(pairs, "clara-fl", "hand-written"),
            "final_val_mean_dice": pairs[0]["clara-fl"].final_val_dice,
        },
    )


def cpu_record(pairs: list[Pair]) -> Record:
    """The same comparison in CPU time (user + system): less sensitive to other load on a shared machine."""
    ratios = [p["clara-fl"].cpu_s / p["hand-written"].cpu_s for p in pairs]
    return Record(
        figure="1 standalone overhead (CPU)",
        measure="CPU time (user+sys), whole process (clara-fl train / hand-written MONAI script)",
        baseline="bench/handwritten_train.py",
        kind="ratio",
        value=median(ratios),
        unit="x",
        goal="(reported)",
        met=None,
        samples=[round(r, 4) for r in ratios],
        detail={
            "clara_cpu_s": [round(p["clara-fl"].cpu_s, 3) for p in pairs],
            "hand_cpu_s": [round(p["hand-written"].cpu_s, 3) for p in pairs],
        },
    )


def measure(ctx: Context) -> list[Record]:
    pairs = standalone_pairs(ctx)
    return [wall_record(pairs), cpu_record(pairs)]


FIGURE = Figure("1", "standalone overhead", measure)
