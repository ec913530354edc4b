"""Figure 11, robust aggregation against one bad site: what each ``--aggregator`` rule buys when one site of three
sends a bad update, and what it costs against FedAvg on the honest sites alone.

The spleen MMAR on the e2e tests' synthetic data (12 cases, 32^3, 16^3 crops, lr 1e-3; tests/
test_robust_aggregation_e2e.py makes it and runs the jobs in FLARE's simulator), ``ROUNDS`` x ``LOCAL_EPOCHS``
(``QUICK_BUDGET`` with ``--quick``), one job per arm: FedAvg on the 2 honest sites (the reference), then 3 sites of
which site-3 (training on site-1's cases) has its update scaled by -10 by a task-result filter
(tests/robust_attack_filter.py), with plain FedAvg, ``median``, ``trimmed_mean:beta=0.34`` (one value cut at each end
of 3), ``krum:f=0`` and ``multikrum:f=0,m=2`` (with 3 sites Krum's precondition n > 2f+2 allows f = 0 only). Score:
the final global model's val_mean_dice on each honest site's validation data, evaluated as cross-site evaluation
evaluates it. The jobs use the ScatterAndGather template (``clara_fedavg_cse``), so the figure exercises the
ScatterAndGather aggregator while the e2e test exercises the ModelController one. Goals: every rule within 0.05 Dice
of the honest reference, plain FedAvg with the bad site more than 0.3 below it. One bar per arm (the honest sites'
mean, whiskers to each site) goes to ``bench/results/robust_aggregation.png``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.harness.figure import Context, Figure
from bench.harness.records import Record, rounded
from bench.harness.settings import RESULTS

ROUNDS, LOCAL_EPOCHS = 3, 3  # the e2e test's budget
QUICK_BUDGET = (1, 1)
TEMPLATE = "clara_fedavg_cse"
BAD_SITE = "site-3"
HONEST_SITES = ("site-1", "site-2")
WITHIN = 0.05  # a rule's goal: |rule - honest| <= WITHIN
FALLS = 0.3  # plain FedAvg's goal with the bad site: more than FALLS below the honest reference
PICTURE = RESULTS / "robust_aggregation.png"


@dataclasses.dataclass(frozen=True)
class ArmSpec:
    """One job of the figure: its name, ``--aggregator`` (None: FedAvg's weighted mean), sites, whether one is bad."""

    name: str
    aggregator: str | None
    sites: int
    bad: bool


HONEST = ArmSpec("FedAvg, 2 honest sites", None, 2, False)
ARMS: tuple[ArmSpec, ...] = (
    HONEST,
    ArmSpec("FedAvg, bad site", None, 3, True),
    ArmSpec("median, bad site", "median", 3, True),
    ArmSpec("trimmed_mean:beta=0.34, bad site", "trimmed_mean:beta=0.34", 3, True),
    ArmSpec("krum:f=0, bad site", "krum:f=0", 3, True),
    ArmSpec("multikrum:f=0,m=2, bad site", "multikrum:f=0,m=2", 3, True),
)


@dataclasses.dataclass
class ArmResult:
    """An arm's global model's Dice on each honest site's validation data, and the job's wall time."""

    spec: ArmSpec
    per_site: dict[str, float]
    wall_s: float

    @property
    def mean(self) -> float:
        return statistics.fmean(self.per_site.values())


def run_arms(
    work: Path,
    rounds: int,
    local_epochs: int,
    template: str = TEMPLATE,
    log: Callable[[str], None] = print,
    arms: Sequence[ArmSpec] = ARMS,
) -> list[ArmResult]:
    """Every arm, one simulation after the other, on one set of data made in ``work``.

    Args:
        work: scratch folder (data, jobs, workspaces).
        rounds: FL rounds of every job.
        local_epochs: local epochs per round.
        template: the job template.
        log: where each arm's line goes.
        arms: the arms to run.

    Raises:
        AssertionError: a simulation failed (the e2e helpers' check, with the end of its log).
    """
    from tests.test_robust_aggregation_e2e import global_model_dice, simulate_with_bad_site, three_site_data

    site_file = three_site_data(work / "data")
    results = []
    for index, arm in enumerate(arms):
        out = work / f"arm{index}"
        started = time.monotonic()
        server = simulate_with_bad_site(
            out,
            site_file,
            arm.aggregator,
            sites=arm.sites,
            bad_site=BAD_SITE if arm.bad else None,
            template=template,
            rounds=rounds,
            local_epochs=local_epochs,
        )
        per_site = {s: global_model_dice(server, out / "job", site_file, s) for s in HONEST_SITES}
        result = ArmResult(arm, per_site, time.monotonic() - started)
        results.append(result)
        shown = ", ".join(f"{s} {d:.3f}" for s, d in per_site.items())
        log(f"  {arm.name:34s} Dice {result.mean:.3f} ({shown}), {result.wall_s:.0f} s")
    return results


def robust_records(results: Sequence[ArmResult], rounds: int, local_epochs: int, template: str) -> list[Record]:
    """The honest reference's Dice (reported), then each other arm's difference from it against its goal.

    Raises:
        ValueError: ``results`` has no honest reference arm.
    """
    reference = next((r for r in results if r.spec == HONEST), None)
    if reference is None:
        raise ValueError(f"figure 11 needs the '{HONEST.name}' arm")
    budget = f"{rounds} rounds x {local_epochs} epochs, {template}"
    detail_of = {r.spec.name: {"per_site": r.per_site, "wall_s": round(r.wall_s, 1)} for r in results}
    records = [
        Record(
            figure="11 robust aggregation: honest reference",
            measure=f"FedAvg on the 2 honest sites, global model's mean Dice over them, {budget}",
            baseline="(reported)",
            kind="value",
            value=rounded(reference.mean),
            unit="Dice",
            goal="(reported)",
            met=None,
            samples=[round(d, 4) for d in reference.per_site.values()],
            detail=detail_of[reference.spec.name],
        )
    ]
    for result in results:
        if result.spec == HONEST:
            continue
        difference = result.mean - reference.mean
        plain = result.spec.aggregator is None
        records.append(
            Record(
                figure=f"11 robust aggregation: {result.spec.name}",
                measure=f"global model's mean Dice over the honest sites minus the reference's, {budget}",
                baseline=f"{HONEST.name} ({reference.mean:.3f})",
                kind="delta",
                value=rounded(difference),
                unit="",
                goal=f"< -{FALLS}" if plain else f"within +-{WITHIN}",
                met=difference < -FALLS if plain else abs(difference) <= WITHIN,
                samples=[round(d, 4) for d in result.per_site.values()],
                detail={"mean": round(result.mean, 4), **detail_of[result.spec.name]},
            )
        )
    return records


def arm_bars(results: Sequence[ArmResult], title: str, path: Path = PICTURE) -> Path:
    """One bar per arm (the honest sites' mean Dice, whiskers to each site), the reference's band of +-WITHIN
    shaded (matplotlib's Agg backend, 100 dpi, as figure 8's pictures)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(8.0, 4.2), layout="constrained")
    means = [r.mean for r in results]
    low = [m - min(r.per_site.values()) for m, r in zip(means, results, strict=True)]
    high = [max(r.per_site.values()) - m for m, r in zip(means, results, strict=True)]
    colours = [
        "tab:green" if r.spec == HONEST else "tab:red" if r.spec.aggregator is None else "tab:blue" for r in results
    ]
    axes.bar(range(len(results)), means, 0.6, yerr=[low, high], capsize=3, color=colours)
    reference = next((r for r in results if r.spec == HONEST), None)
    if reference is not None:
        band = f"honest reference +-{WITHIN}"
        axes.axhspan(
            reference.mean - WITHIN, reference.mean + WITHIN, color="tab:green", alpha=0.15, zorder=0, label=band
        )
        axes.legend(fontsize="small", loc="upper right")
    axes.set_xticks(range(len(results)), [r.spec.name.replace(", ", "\n") for r in results], fontsize="small")
    axes.set_ylabel("val_mean_dice, honest sites' validation data")
    axes.set_ylim(0, 1)
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return path


def measure(ctx: Context) -> list[Record]:
    rounds, local_epochs = QUICK_BUDGET if ctx.quick else (ROUNDS, LOCAL_EPOCHS)
    ctx.log(
        f"figure 11: one bad site of 3 (update x -10), FedAvg / {', '.join(a.aggregator or 'FedAvg' for a in ARMS[2:])}"
        f" against FedAvg on the 2 honest sites, {rounds} rounds x {local_epochs} epochs"
    )
    results = run_arms(ctx.work / "robust", rounds, local_epochs, log=ctx.log)
    picture = arm_bars(results, f"figure 11: one bad site of 3, {rounds} rounds x {local_epochs} epochs")
    ctx.log(f"  bars: {picture}")
    return robust_records(results, rounds, local_epochs, TEMPLATE)


FIGURE = Figure("11", "robust aggregation against one bad site", measure)
