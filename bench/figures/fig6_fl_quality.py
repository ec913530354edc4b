"""Figure 6, FL quality: FedAvg of 2 sites (``quality_rounds`` x ``quality_local_epochs``) vs centralized training
on the union of their data (the same epochs), same seed; both final models scored by one neutral evaluator
(bench/handwritten_train.py --eval-weights) on the union validation set; goal: median ratio over the seeds >= 0.97."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness.comparison import median
from bench.harness.federated import run_clara_fl
from bench.harness.figure import Context, Figure
from bench.harness.records import Record
from bench.harness.settings import Settings
from bench.harness.training import evaluate_weights, train_clara


def quality_pair(settings: Settings, data: Path, out: Path, seed: int) -> dict[str, Any]:
    """FedAvg (clara-fl, simulator) and centralized ``clara-fl train`` on the union data, same epochs and seed;
    both final models measured by one neutral evaluator on the union validation set."""
    rounds, local = settings.quality_rounds, settings.quality_local_epochs
    seed_set = [f"determinism.random_seed={seed}"]
    fl_run, workspace = run_clara_fl(
        settings, data, out / "fedavg", rounds, 1000, local_epochs=local, extra_set=seed_set
    )
    central_run, central_weights = train_clara(
        settings, data, data / "dataset.json", out / "central", rounds * local, seed_set
    )
    return {
        "seed": seed,
        "fedavg": evaluate_weights(
            settings, data, workspace / "server" / "simulate_job" / "app_server" / "FL_global_model.pt", out / "eval"
        ),
        "central": evaluate_weights(settings, data, central_weights, out / "eval"),
        "fedavg_wall_s": round(fl_run.wall_s, 1),
        "central_wall_s": round(central_run.wall_s, 1),
    }


def measure(ctx: Context) -> list[Record]:
    """Median over seeds of FedAvg's final val_mean_dice / centralized training's, each pair with one seed."""
    settings = ctx.settings
    rounds, local = settings.quality_rounds, settings.quality_local_epochs
    epochs = rounds * local
    ctx.log(f"figure 6: FedAvg {rounds} x {local} epochs vs centralized training on the union")
    pairs = []
    for seed in settings.quality_seeds:
        pair = quality_pair(settings, ctx.data, ctx.work / "quality" / f"seed-{seed}", seed)
        ctx.log(
            f"  seed {seed}: FedAvg {rounds} rounds x {local} epochs: val_mean_dice {pair['fedavg']:.4f}; centralized {epochs} epochs: {pair['central']:.4f}"
        )
        pairs.append(pair)
    ratios = [p["fedavg"] / p["central"] for p in pairs if p["central"] > 0]
    value = median(ratios)
    record = Record(
        figure="6 FL quality",
        measure=f"final val_mean_dice, FedAvg 2 sites ({rounds} rounds x {local} epochs) / centralized ({epochs} epochs), union val set",
        baseline=f"clara-fl train on the union of the sites' data, same seed (seeds {', '.join(map(str, settings.quality_seeds))})",
        kind="ratio",
        value=value,
        unit="x",
        goal=">= 0.97",
        met=value is not None and value >= 0.97,
        samples=[round(r, 4) for r in ratios],
        detail={
            "pairs": pairs,
            "evaluator": "bench/handwritten_train.py --eval-weights (the same network, transforms and metric for both)",
        },
    )
    return [record]


FIGURE = Figure("6", "FL quality", measure)
