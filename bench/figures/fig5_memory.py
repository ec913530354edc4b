"""Figure 5, memory: peak RSS of a site process (vs the MONAI path's), and RSS growth per round over the rounds
of figure 4 (least-squares slope after the warm-up rounds); goal: <= 1 MB per round."""

from __future__ import annotations

from bench.figures.fedavg_runs import Pair, fedavg_pairs
from bench.harness.comparison import median
from bench.harness.figure import Context, Figure
from bench.harness.records import Record
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


def measure(ctx: Context) -> list[Record]:
    return memory_records(fedavg_pairs(ctx), ctx.settings)


FIGURE = Figure("5", "memory", measure)
