"""Figure 5, memory: peak RSS of a site process (vs the MONAI path's), and RSS growth per round over the rounds
of figure 4 (least-squares slope after the warm-up rounds); goal: <= 1 MB per round.

The long run: one clara-fl FedAvg job of ``memory_rounds`` rounds (100; 2 sites, the same tiny settings), with
bench/probe recording the RSS after every round of each site's two processes (the confined training process and
FLARE's job process) and of the server's; growth = least-squares slope after ``memory_long_warmup_rounds``, of a
site's two processes together (the larger site) and of the server. Goal: <= 1 MB per round at each. The record also
keeps each process's thread count per round and the server's threads by name at its last round. With
``CLARA_FL_BENCH_HEAP=N`` in the environment the probe also writes what grew (tracemalloc, gc objects) every N
rounds, into the run's probe folder (kept with ``--keep-work``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.figures.fedavg_runs import Pair, fedavg_pairs
from bench.harness.comparison import median
from bench.harness.federated import read_probe, run_clara_fl
from bench.harness.figure import Context, Figure
from bench.harness.memory import last_thread_names, round_series, site_totals, slope
from bench.harness.records import Record, rounded
from bench.harness.settings import Settings


def memory_records(pairs: list[Pair], settings: Settings) -> list[Record]:
    def per_pair(side: str, key: str) -> list[float]:
        return [max(site[key] for site in p[side]["memory"].values() if site[key] is not None) for p in pairs]

    peak, peak_monai = per_pair("clara-fl", "peak_rss_mb"), per_pair("monai", "peak_rss_mb")
    growth, growth_monai = per_pair("clara-fl", "growth_mb_per_round"), per_pair("monai", "growth_mb_per_round")
    value = median(growth)
    return [
        Record(
            figure="5 memory: peak RSS",
            measure="peak RSS of a site process (the larger site), clara-fl / MONAI path",
            baseline="MONAI path site process",
            kind="ratio",
            value=median([a / b for a, b in zip(peak, peak_monai, strict=True)]),
            unit="x",
            goal="(reported)",
            met=None,
            samples=[round(v, 1) for v in peak],
            note="",
            detail={
                "clara_peak_rss_mb": [round(v, 1) for v in peak],
                "monai_peak_rss_mb": [round(v, 1) for v in peak_monai],
            },
        ),
        Record(
            figure="5 memory: RSS growth",
            measure=f"RSS growth per round after warm-up (least-squares slope over rounds {settings.memory_warmup_rounds}..{settings.rounds - 1}, larger site)",
            baseline=f"MONAI path: {', '.join(f'{g:.2f}' for g in growth_monai)} MB/round",
            kind="value",
            value=value,
            unit="MB/round",
            goal="<= 1.0 MB/round",
            met=value is not None and value <= 1.0,
            samples=[round(g, 3) for g in growth],
            detail={
                "monai_growth_mb_per_round": [round(g, 3) for g in growth_monai],
                "clara_rss_after_round_mb": {
                    s: m["rss_after_round_mb"] for s, m in pairs[0]["clara-fl"]["memory"].items()
                },
                "clara_threads_after_round": {
                    s: m["threads_after_round"] for s, m in pairs[0]["clara-fl"]["memory"].items()
                },
                "monai_threads_after_round": {
                    s: m["threads_after_round"] for s, m in pairs[0]["monai"]["memory"].items()
                },
                "monai_rss_after_round_mb": {
                    s: m["rss_after_round_mb"] for s, m in pairs[0]["monai"]["memory"].items()
                },
            },
        ),
    ]


def long_run_records(series: dict[str, list[float]], settings: Settings, run: dict[str, Any]) -> list[Record]:
    """The long run's growth per round at the larger site (its two processes together) and at the server."""
    warmup = settings.memory_long_warmup_rounds
    growth = {name: slope(values[warmup:]) for name, values in series.items()}
    sites = site_totals(series)
    site_growth = {site: slope(values[warmup:]) for site, values in sites.items()}
    detail = {
        **run,
        "rounds": settings.memory_rounds,
        "rounds_measured": f"{warmup}..{settings.memory_rounds - 1}",
        "growth_mb_per_round": {name: rounded(g) for name, g in growth.items()},
        "site_growth_mb_per_round": {site: rounded(g) for site, g in site_growth.items()},
        "rss_after_round_mb": {name: [round(v, 1) for v in values] for name, values in series.items()},
    }
    records = []
    for where, values in (("site", list(site_growth.values())), ("server", [growth.get("server")])):
        known = [v for v in values if v is not None]
        value = max(known) if known else None
        records.append(
            Record(
                figure=f"5 memory: RSS growth, {settings.memory_rounds} rounds, {where}",
                measure=f"least-squares slope of RSS after each round, rounds {warmup}..{settings.memory_rounds - 1}"
                + (" (a site's training and FLARE processes together, the larger site)" if where == "site" else ""),
                baseline="absolute",
                kind="value",
                value=value,
                unit="MB/round",
                goal="<= 1.0 MB/round",
                met=value is not None and value <= 1.0,
                samples=[rounded(v) for v in known],
                detail=detail
                if where == "site"
                else {
                    "growth_mb_per_round": detail["growth_mb_per_round"],
                    "rss_after_round_mb": detail["rss_after_round_mb"].get("server"),
                    **{k: v for k, v in run.items() if k.startswith("server_")},
                },
            )
        )
    return records


def long_run(ctx: Context) -> list[Record]:
    """One clara-fl job of ``memory_rounds`` rounds, analysed per process from the probe's records.

    Raises:
        RuntimeError: the job failed.
    """
    settings = ctx.settings
    ctx.log(f"figure 5: one clara-fl FedAvg job of {settings.memory_rounds} rounds, site and server RSS per round")
    out = ctx.work / "memory"
    # a round takes 3-12 s on 2 cores (idle to loaded): the suite's per-run limit is for 20-round jobs
    patient = dataclasses.replace(settings, timeout_s=max(settings.timeout_s, 30 * settings.memory_rounds))
    run, _ = run_clara_fl(patient, ctx.data, out, settings.memory_rounds, val_interval=1000)
    probe = read_probe(out / "probe")
    series = round_series(probe)
    threads = round_series(probe, "threads")
    ctx.log(f"  {settings.memory_rounds} rounds in {run.wall_s:.0f} s; RSS series: {sorted(series)}")
    return long_run_records(
        series,
        settings,
        {
            "process_wall_s": round(run.wall_s, 1),
            "threads_after_round": {name: [int(v) for v in values] for name, values in threads.items()},
            "server_threads_after_round": [int(v) for v in threads.get("server", [])],
            "server_threads_by_name_last_round": last_thread_names(probe, "server"),
        },
    )


def measure(ctx: Context) -> list[Record]:
    return memory_records(fedavg_pairs(ctx), ctx.settings) + long_run(ctx)


FIGURE = Figure("5", "memory", measure)
