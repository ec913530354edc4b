"""The runs figures 4-5 share: the same FedAvg (FLARE simulator, 2 sites) through clara-fl and through the MONAI
path (NVFlare's Client API + ``monai.fl.client.MonaiAlgo`` on bench/bundle), alternating, ``fl_pairs`` times,
each analysed per round from the server log and bench/probe's records."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.harness.comparison import median, rotated
from bench.harness.federated import read_probe, round_starts, run_clara_fl, run_simulation
from bench.harness.figure import Context
from bench.harness.memory import slope
from bench.harness.processes import Run, base_env
from bench.harness.settings import BENCH, PY, Settings

Pair = dict[str, dict[str, Any]]  # side -> its analysis (analyse_fl) in one pair


def run_monai_fl(settings: Settings, data: Path, out: Path, rounds: int, val_interval: int) -> tuple[Run, Path]:
    """The MONAI path's job (bench/monai_fl/make_job.py) in ``nvflare simulator`` on 2 sites.

    Raises:
        subprocess.CalledProcessError: the job could not be made.
        RuntimeError: the simulation failed.
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    roi = settings.roi
    overrides = [
        f"roi_size=[{roi},{roi},{roi}]",
        f"learning_rate={settings.lr}",
        "num_workers=0",
        f"val_interval={val_interval}",
    ]
    made = subprocess.run(
        [
            PY,
            str(BENCH / "monai_fl" / "make_job.py"),
            str(out / "job" / "monai_spleen"),
            "--rounds",
            str(rounds),
            "--local-epochs",
            str(settings.local_epochs),
            "--data-root",
            str(data),
            "--datalist-pattern",
            str(data / "dataset_{SITE_NAME}.json"),
            *[a for o in overrides for a in ("--set", o)],
        ],
        check=True,
        env=base_env(1),
        capture_output=True,
        text=True,
    )
    job = Path(made.stdout.strip().splitlines()[-1])
    command = [PY, "-m", "nvflare.cli", "simulator", str(job), "-w", str(out / "ws"), "-n", "2", "-t", "2"]
    return run_simulation(settings, "MONAI FL (MonaiAlgo)", command, out), out / "ws"


def analyse_fl(server_log: Path, probe: list[dict[str, Any]], warmup: int, memory_warmup: int) -> dict[str, Any]:
    """Per round r (warm-up rounds and the last one left out): the wall time from round r's start to
    round r+1's, the sites' engine time in that window (the slower site's), and their difference; the
    part of that difference spent inside the FL wrapper (learner / MonaiAlgo) outside the engines."""
    starts = round_starts(server_log)
    engines = [r for r in probe if r.get("kind", "engine") == "engine" and r["site"] != "?"]
    wrappers = [r for r in probe if r.get("kind") == "wrapper" and r["site"] != "?"]
    sites = sorted({r["site"] for r in engines})
    rounds: list[dict[str, Any]] = []
    for r in sorted(starts):
        if r < warmup or r + 1 not in starts:
            continue
        lo, hi = starts[r], starts[r + 1]

        def total(records: list[dict[str, Any]], site: str, lo: float = lo, hi: float = hi) -> float:
            return sum(rec["end"] - rec["start"] for rec in records if rec["site"] == site and lo <= rec["start"] < hi)

        local = {site: total(engines, site) for site in sites}
        glue = {site: max(0.0, total(wrappers, site) - local[site]) for site in sites} if wrappers else {}
        slowest = max(local.values()) if local else 0.0
        rounds.append(
            {
                "round": r,
                "wall_s": hi - lo,
                "local_s": slowest,
                "overhead_s": hi - lo - slowest,
                "wrapper_glue_s": max(glue.values()) if glue else None,
                "per_site_local_s": local,
            }
        )
    memory = {}
    for site in sites:
        trains = [rec for rec in engines if rec["site"] == site and rec["engine"].endswith("Trainer")]
        rss = [rec["rss"] / 2**20 for rec in trains]  # MiB after each round's training
        memory[site] = {
            "peak_rss_mb": max(rec["peak_rss"] for rec in probe if rec["site"] == site) / 2**20,
            "rss_after_round_mb": [round(v, 1) for v in rss],
            "threads_after_round": [rec.get("threads") for rec in trains],
            "growth_mb_per_round": slope(rss[memory_warmup:]),
            "growth_incl_warmup_mb_per_round": (rss[-1] - rss[0]) / (len(rss) - 1) if len(rss) > 1 else None,
        }
    return {
        "rounds": rounds,
        "median_wall_s": median([r["wall_s"] for r in rounds]),
        "median_local_s": median([r["local_s"] for r in rounds]),
        "median_overhead_s": median([r["overhead_s"] for r in rounds]),
        "median_wrapper_glue_s": median([r["wrapper_glue_s"] for r in rounds]),
        "memory": memory,
        "rounds_started": len(starts),
    }


def run_fl(ctx: Context) -> list[Pair]:
    """A/B pairs of the same FedAvg (2 sites, ``rounds`` x ``local_epochs``) through clara-fl and the MONAI path.

    Raises:
        RuntimeError: a side failed or started fewer rounds than asked.
    """
    settings = ctx.settings
    ctx.log(
        f"figures 4-5: FedAvg, 2 sites, {settings.rounds} rounds: clara-fl vs MONAI path, {settings.fl_pairs} pairs"
    )
    val_interval = 1000  # one validation per round at each site (before training), in both paths
    sides = {"clara-fl": run_clara_fl, "monai": run_monai_fl}
    pairs = []
    for i in range(settings.fl_pairs):
        order = rotated(list(sides), i)
        result: Pair = {}
        for name in order:
            out = ctx.work / "fl" / f"{i}-{name}"
            run, workspace = sides[name](settings, ctx.data, out, settings.rounds, val_interval)
            analysis = analyse_fl(
                workspace / "server" / "log.txt",
                read_probe(out / "probe"),
                settings.warmup_rounds,
                settings.memory_warmup_rounds,
            )
            if analysis["rounds_started"] < settings.rounds:
                raise RuntimeError(
                    f"{name}: only {analysis['rounds_started']} of {settings.rounds} rounds started (log {run.log})"
                )
            analysis["process_wall_s"] = run.wall_s
            analysis["workspace"] = str(workspace)
            result[name] = analysis
        ctx.log(
            f"  pair {i + 1}/{settings.fl_pairs} ({' -> '.join(order)}): "
            + ", ".join(
                f"{n} round {result[n]['median_wall_s']:.2f} s = local {result[n]['median_local_s']:.2f} + overhead {result[n]['median_overhead_s']:.2f} s"
                f" (wrapper glue {result[n]['median_wrapper_glue_s'] or 0:.2f} s)"
                for n in sides
            )
        )
        pairs.append(result)
    return pairs


def fedavg_pairs(ctx: Context) -> list[Pair]:
    """The clara-fl / MONAI path pairs, run once for whichever of figures 4-5 asks first."""
    return ctx.shared("fedavg", run_fl)
