"""Figure 10, sites per machine: how a FedAvg simulation's round time and memory grow with the number of simulated
sites, so a user knows how many sites one machine can simulate.

For each N of ``scale_sites`` (2, 4, 8): one clara-fl FedAvg job of ``scale_rounds`` rounds x 1 local epoch
(``clara-fl job create --min-clients N``) run by ``clara-fl simulate -n N -t N`` (every site at once, each in its
own FLARE process and confined training process, ``OMP_NUM_THREADS`` = 1 per site as the figure 4-5 runs set it).
Every site has the same data whatever N (``scale_cases_per_site`` synthetic cases of its own, dealt from one
dataset of ``max(scale_sites)`` sites), so a round trains N times the work. Round time = the median gap between
the server log's ``Round N started.`` lines, round 0 (start-up) left out; peak memory = the largest sum of the
RSS of every process the simulation started, sampled every 0.5 s over the whole run (start-up, rounds and
cross-site validation; shared library pages count once per process, so the sum is an upper bound).
No goal: it is reported."""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.harness.comparison import median
from bench.harness.data import prepare_data
from bench.harness.federated import round_starts, run_clara_fl
from bench.harness.figure import Context, Figure
from bench.harness.memory import TreeRss
from bench.harness.records import Record, rounded
from bench.harness.settings import Settings


def round_gaps(starts: dict[int, float]) -> list[float]:
    """Seconds from each round's start to the next one's, round 0 (which holds the sites' start-up) left out."""
    return [starts[r + 1] - starts[r] for r in sorted(starts) if r >= 1 and r + 1 in starts]


def scale_records(runs: dict[int, dict[str, Any]], settings: Settings) -> list[Record]:
    """Two records per number of sites: the median round time and the peak summed RSS."""
    records = []
    for sites, run in sorted(runs.items()):
        common = {"sites": sites, "threads": sites, **{k: v for k, v in run.items() if k != "round_s"}}
        records.append(
            Record(
                figure=f"10 sites per machine: {sites} sites, round time",
                measure=f"median round time, FedAvg {settings.scale_rounds} rounds x 1 epoch, simulate -n {sites} -t {sites}",
                baseline="(reported)",
                kind="value",
                value=run["round_s"],
                unit="s",
                goal="(reported)",
                met=None,
                samples=run["round_gaps_s"],
                detail=common,
            )
        )
        records.append(
            Record(
                figure=f"10 sites per machine: {sites} sites, peak memory",
                measure="peak of the summed RSS of the simulation's processes",
                baseline="(reported)",
                kind="value",
                value=run["peak_rss_mb"],
                unit="MB",
                goal="(reported)",
                met=None,
                samples=[run["peak_rss_mb"]],
                detail={"sites": sites, "processes_at_peak": run["processes_at_peak"]},
            )
        )
    return records


def measure(ctx: Context) -> list[Record]:
    """One job per number of sites, one after the other.

    Raises:
        RuntimeError: a simulation failed.
    """
    settings = ctx.settings
    most = max(settings.scale_sites)
    data_settings = dataclasses.replace(settings, cases=settings.scale_cases_per_site * most)
    data = prepare_data(data_settings, sites=most)
    ctx.log(
        f"figure 10: FedAvg on {', '.join(map(str, settings.scale_sites))} simulated sites, {settings.scale_rounds} rounds"
    )
    runs: dict[int, dict[str, Any]] = {}
    for sites in settings.scale_sites:
        out = ctx.work / "scale" / f"{sites}-sites"
        with TreeRss() as memory:
            run, workspace = run_clara_fl(settings, data, out, settings.scale_rounds, val_interval=1000, sites=sites)
        gaps = round_gaps(round_starts(workspace / "server" / "log.txt"))
        runs[sites] = {
            "round_s": median(gaps),
            "round_gaps_s": [round(g, 2) for g in gaps],
            "peak_rss_mb": round(memory.peak_bytes / 2**20, 1),
            "processes_at_peak": memory.peak_processes,
            "process_wall_s": round(run.wall_s, 1),
            "rss_samples": memory.samples,
        }
        ctx.log(
            f"  {sites} sites: round {rounded(runs[sites]['round_s'], 2)} s, peak RSS sum "
            f"{runs[sites]['peak_rss_mb']:.0f} MB ({memory.peak_processes} processes), whole run {run.wall_s:.0f} s"
        )
    return scale_records(runs, settings)


FIGURE = Figure("10", "sites per machine", measure)
