"""Figure 9, homomorphic encryption: the same FedAvg job with ``--he`` and without; goal: median round time ratio
<= 2.0; reported: the bytes a site sends per round (its sockets, counted by bench/probe), with and without."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness.comparison import median, rotated
from bench.harness.federated import JobRefused, read_probe, round_starts, run_clara_fl
from bench.harness.figure import Context, Figure
from bench.harness.records import Record
from bench.harness.settings import Settings

HE_TEMPLATE = "clara_fedavg_cse"


def round_durations(server_log: Path) -> list[float]:
    """Seconds from each round's start to the next one's, round 0 left out (it also starts the sites) when
    there are later rounds."""
    starts = round_starts(server_log)
    gaps = [starts[r + 1] - starts[r] for r in sorted(starts) if r + 1 in starts]
    return gaps[1:] or gaps


def bytes_sent_per_round(probe: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per site: median of the bytes its sockets sent between the ends of consecutive local trainings."""
    sent: dict[str, float | None] = {}
    for site in sorted({r["site"] for r in probe if r["site"] != "?"}):
        trains = sorted(
            (r for r in probe if r["site"] == site and r.get("kind") == "wrapper" and r.get("method") == "train"),
            key=lambda r: r["end"],
        )
        counts = [r["bytes_sent"] for r in trains if "bytes_sent" in r]
        sent[site] = median([b - a for a, b in zip(counts, counts[1:], strict=False)])
    return sent


def run_he_pair(ctx: Context) -> dict[str, Any]:
    """The same FedAvg job without and with ``--he`` (which goes first alternates with ``algorithm_seed``).

    Raises:
        JobRefused: job create does not accept ``--he``.
    """
    settings = ctx.settings
    # both on the ScatterAndGather template HE runs on, so that only the encryption differs
    same_template = ["--template", HE_TEMPLATE]
    sides: dict[str, list[str]] = {"plain": same_template, "he": [*same_template, "--he"]}
    result: dict[str, Any] = {}
    for name in rotated(sorted(sides), settings.algorithm_seed):
        out = ctx.work / "he" / name
        run, workspace = run_clara_fl(
            settings, ctx.data, out, settings.he_rounds, 1000, settings.he_local_epochs, job_options=sides[name]
        )
        rounds = round_durations(workspace / "server" / "log.txt")
        per_site = bytes_sent_per_round(read_probe(out / "probe"))
        known = [b for b in per_site.values() if b is not None]
        result[name] = {
            "round_s": [round(r, 3) for r in rounds],
            "median_round_s": median(rounds),
            "bytes_sent_per_round": per_site,
            "max_site_bytes_sent_per_round": max(known) if known else None,
            "process_wall_s": round(run.wall_s, 1),
        }
    ctx.log(
        "  "
        + ", ".join(
            f"{n}: round {r['median_round_s'] or float('nan'):.2f} s, "
            f"{(r['max_site_bytes_sent_per_round'] or float('nan')) / 1e6:.1f} MB sent per round by a site"
            for n, r in result.items()
        )
    )
    return result


def he_records(pair: dict[str, Any], settings: Settings) -> list[Record]:
    """HE round time / plain round time (goal <= 2.0) and the bytes a site sends per round with and without."""
    plain, he = pair["plain"], pair["he"]
    time_ratio = (
        he["median_round_s"] / plain["median_round_s"] if he["median_round_s"] and plain["median_round_s"] else None
    )
    sent_plain, sent_he = plain["max_site_bytes_sent_per_round"], he["max_site_bytes_sent_per_round"]

    def mb(sent: float | None) -> str:
        return "n/a" if sent is None else f"{sent / 1e6:.1f} MB"

    return [
        Record(
            figure="9 HE round time",
            measure=f"median round time (rounds 1..{settings.he_rounds - 2}, {settings.he_local_epochs} local "
            "epoch(s) each), FedAvg with --he / without, 2 sites",
            baseline="the same job without --he",
            kind="ratio",
            value=time_ratio,
            unit="x",
            goal="<= 2.00",
            met=time_ratio is not None and time_ratio <= 2.0,
            samples=[he["median_round_s"], plain["median_round_s"]],
            detail=pair,
        ),
        Record(
            figure="9 HE bytes sent",
            measure="bytes a site's sockets send per round (the larger site), --he / without",
            baseline=f"without --he: {mb(sent_plain)}, with: {mb(sent_he)} per round",
            kind="ratio",
            value=sent_he / sent_plain if sent_he and sent_plain else None,
            unit="x",
            goal="(reported)",
            met=None,
            note="" if sent_he and sent_plain else "no socket bytes counted (bench/probe)",
            detail={"plain": plain["bytes_sent_per_round"], "he": he["bytes_sent_per_round"]},
        ),
    ]


def measure(ctx: Context) -> list[Record]:
    ctx.log(
        f"figure 9: FedAvg with --he and without, {ctx.settings.he_rounds} rounds of "
        f"{ctx.settings.he_local_epochs} local epoch(s)"
    )
    try:
        pair = run_he_pair(ctx)
    except JobRefused as refused:
        skipped = Record(
            "9 HE round time",
            "median round time, --he / without",
            "same job without --he",
            "skipped",
            None,
            "",
            "<= 2.00",
            None,
            note=f"skipped: {refused}",
        )
        return [skipped]
    return he_records(pair, ctx.settings)


FIGURE = Figure("9", "homomorphic encryption", measure)
