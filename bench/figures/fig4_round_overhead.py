"""Figure 4, FL round overhead: FLARE simulator, 2 sites, wall time per round minus the sites' local train +
validate time (the time inside ignite's ``Engine.run``, measured by bench/probe in every site process); goals:
<= 0.5 s, and <= half of the official MONAI path's (NVFlare's Client API + ``monai.fl.client.MonaiAlgo`` on
bench/bundle, same simulator)."""

from __future__ import annotations

from bench.figures.fedavg_runs import Pair, fedavg_pairs
from bench.harness.comparison import median
from bench.harness.figure import Context, Figure
from bench.harness.records import Record, rounded
from bench.harness.settings import Settings


def overhead_records(pairs: list[Pair], settings: Settings) -> list[Record]:
    clara = [p["clara-fl"]["median_overhead_s"] for p in pairs]
    monai = [p["monai"]["median_overhead_s"] for p in pairs]
    ratios = [c / m for c, m in zip(clara, monai, strict=True) if m]
    value, ratio = median(clara), median(ratios)
    detail = {
        "rounds": settings.rounds,
        "rounds_measured": f"{settings.warmup_rounds}..{settings.rounds - 2}",
        "clara_round_wall_s": [round(p["clara-fl"]["median_wall_s"], 3) for p in pairs],
        "clara_round_local_s": [round(p["clara-fl"]["median_local_s"], 3) for p in pairs],
        "monai_round_wall_s": [round(p["monai"]["median_wall_s"], 3) for p in pairs],
        "monai_round_local_s": [round(p["monai"]["median_local_s"], 3) for p in pairs],
        "monai_overhead_s": [round(m, 3) for m in monai],
        "clara_learner_glue_s": [rounded(p["clara-fl"]["median_wrapper_glue_s"]) for p in pairs],
        "monai_algo_glue_s": [rounded(p["monai"]["median_wrapper_glue_s"]) for p in pairs],
        "note": "overhead = FLARE (task dispatch, 2 x 18 MB transfers, server polling, aggregation) + the wrapper's glue "
        "(time inside ClaraLearner.train/validate or MonaiAlgo.train/evaluate/get_weights outside the ignite engines)",
    }
    return [
        Record(
            figure="4 FL round overhead",
            measure="per round: wall minus the sites' local train+validate (clara-fl, simulator, 2 sites)",
            baseline="absolute (median of per-round medians)",
            kind="value",
            value=value,
            unit="s",
            goal="<= 0.50 s",
            met=value is not None and value <= 0.5,
            samples=[round(c, 3) for c in clara],
            detail=detail,
        ),
        Record(
            figure="4 FL round overhead vs MONAI",
            measure="clara-fl overhead / MONAI path overhead, per pair",
            baseline="NVFlare Client API + monai.fl.client.MonaiAlgo on bench/bundle (FedAvgRecipe defaults)",
            kind="ratio",
            value=ratio,
            unit="x",
            goal="<= 0.50",
            met=ratio is not None and ratio <= 0.5,
            samples=[round(r, 3) for r in ratios],
            detail={"monai_overhead_s": [round(m, 3) for m in monai]},
        ),
    ]


def measure(ctx: Context) -> list[Record]:
    return overhead_records(fedavg_pairs(ctx), ctx.settings)


FIGURE = Figure("4", "FL round overhead", measure)
