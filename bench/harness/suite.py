"""The suite's command line and run: which figures, with which settings, then the table and ``latest.json``."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.harness.data import prepare_data
from bench.harness.figure import Context, Figure
from bench.harness.records import Record, table
from bench.harness.settings import CACHE, PY, QUICK, RESULTS, Settings


def parser(description: str, figures: Mapping[str, Figure]) -> argparse.ArgumentParser:
    """The command line of ``bench/run.py``: ``--figures``, ``--quick``, the settings it can change, the files."""
    full = Settings()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny settings, one pair of each (the smoke test's mode)")
    parser.add_argument(
        "--figures", default=",".join(figures), help="comma-separated figure numbers to run (default: all)"
    )
    parser.add_argument("--pairs", type=int, help=f"standalone A/B pairs (default {full.pairs}, quick {QUICK.pairs})")
    parser.add_argument("--fl-pairs", type=int, help=f"FL A/B pairs (default {full.fl_pairs}, quick {QUICK.fl_pairs})")
    parser.add_argument("--rounds", type=int, help=f"FL rounds (default {full.rounds}, quick {QUICK.rounds})")
    parser.add_argument(
        "--memory-rounds",
        type=int,
        help=f"figure 5's long run: rounds (default {full.memory_rounds}, quick {QUICK.memory_rounds})",
    )
    parser.add_argument(
        "--algorithm-rounds",
        type=int,
        help="figure 8: rounds (x local epochs = every arm's epochs; "
        f"default {full.algorithm_rounds}, quick {QUICK.algorithm_rounds})",
    )
    parser.add_argument(
        "--algorithm-local-epochs",
        type=int,
        help=f"figure 8: local epochs per round (default {full.algorithm_local_epochs}, "
        f"quick {QUICK.algorithm_local_epochs})",
    )
    parser.add_argument(
        "--algorithm-seeds",
        type=_numbers,
        help=f"figure 8: comma-separated seeds (default {_shown(full.algorithm_seeds)}, "
        f"quick {_shown(QUICK.algorithm_seeds)})",
    )
    parser.add_argument(
        "--algorithm-sites",
        type=_numbers,
        help=f"figure 8: comma-separated numbers of sites (default {_shown(full.algorithm_sites)}, "
        f"quick {_shown(QUICK.algorithm_sites)})",
    )
    parser.add_argument(
        "--algorithm-datasets",
        type=_datasets,
        help="figure 8: comma-separated data sets of the sites, identical and/or differing (default "
        f"{','.join(full.algorithm_datasets)}; without identical, FedAvg against centralized is not measured)",
    )
    parser.add_argument(
        "--he-local-epochs",
        type=int,
        help=f"figure 9: local epochs per round (default {full.he_local_epochs}, quick {QUICK.he_local_epochs})",
    )
    parser.add_argument(
        "--output", default=str(RESULTS / "latest.json"), help="JSON results file (default bench/results/latest.json)"
    )
    parser.add_argument(
        "--work", default=str(CACHE / "work"), help="scratch folder for runs (default bench/.cache/work)"
    )
    parser.add_argument(
        "--keep-work", action="store_true", help="keep the scratch folder (logs, workspaces, checkpoints: GBs)"
    )
    return parser


def _numbers(value: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {value!r}") from None
    if not numbers or min(numbers) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {value!r}")
    return numbers


def _datasets(value: str) -> tuple[str, ...]:
    known = Settings().algorithm_datasets
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names or any(n not in known for n in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names of {', '.join(known)}, got {value!r}")
    return names


def _shown(numbers: tuple[int, ...]) -> str:
    return ",".join(map(str, numbers))


def settings_from(args: argparse.Namespace) -> Settings:
    """The quick or full settings with the ones given on the command line.

    Raises:
        ValueError: fewer than one pair, or too few rounds for the warm-up rounds and two measured ones.
    """
    settings = QUICK if args.quick else Settings()
    changes = {
        k: v
        for k, v in {
            "pairs": args.pairs,
            "fl_pairs": args.fl_pairs,
            "rounds": args.rounds,
            "memory_rounds": args.memory_rounds,
            "algorithm_rounds": args.algorithm_rounds,
            "algorithm_local_epochs": args.algorithm_local_epochs,
            "algorithm_seeds": args.algorithm_seeds,
            "algorithm_sites": args.algorithm_sites,
            "algorithm_datasets": args.algorithm_datasets,
            "he_local_epochs": args.he_local_epochs,
        }.items()
        if v is not None
    }
    settings = dataclasses.replace(settings, **changes)
    least_rounds = max(settings.warmup_rounds, settings.memory_warmup_rounds) + 2
    if settings.pairs < 1 or settings.fl_pairs < 1 or settings.rounds < least_rounds:
        raise ValueError(f"need at least 1 pair and {least_rounds} rounds")
    if settings.memory_rounds < settings.memory_long_warmup_rounds + 2:
        raise ValueError(f"--memory-rounds: need at least {settings.memory_long_warmup_rounds + 2}")
    return settings


def wanted_figures(option: str, figures: Mapping[str, Figure]) -> list[Figure]:
    """The figures ``--figures`` names, in the registry's order (numbers it does not know are passed over)."""
    wanted = {f.strip() for f in option.split(",") if f.strip()}
    return [figure for number, figure in figures.items() if number in wanted]


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "gpu": "none lent",
    }


def results_document(
    records: Sequence[Record],
    settings: Settings,
    command: Sequence[str],
    elapsed_s: float,
    load_before: Sequence[float],
    load_after: Sequence[float],
) -> dict[str, Any]:
    """What ``latest.json`` holds: the run's date, command, settings, machine, time and load, and every record."""
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(PY).name, "bench/run.py", *command]),
        "mode": settings.mode,
        "settings": dataclasses.asdict(settings),
        "machine": machine(),
        "elapsed_s": round(elapsed_s, 1),
        "load_average_1_5_15": {
            "start": [round(v, 2) for v in load_before],
            "end": [round(v, 2) for v in load_after],
        },
        "records": [dataclasses.asdict(r) for r in records],
    }


def main(description: str, figures: Mapping[str, Figure], argv: Sequence[str] | None = None) -> int:
    """Run the figures the command line names, print the table, write the results file.

    Args:
        description: the ``--help`` description.
        figures: the registry, by figure number, in running order.
        argv: the arguments (default ``sys.argv[1:]``).

    Raises:
        SystemExit: the command line is wrong (exit code 2).
        RuntimeError: a run that a figure needs failed.
    """
    cli = parser(description, figures)
    args = cli.parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as wrong:
        cli.error(str(wrong))
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.time()
    load_before = os.getloadavg()
    log(f"clara-fl benchmarks ({settings.mode}): {dataclasses.asdict(settings)}")
    ctx = Context(settings, prepare_data(settings), work, log, quick=args.quick)
    records: list[Record] = []
    for figure in wanted_figures(args.figures, figures):
        records += figure.measure(ctx)

    elapsed = time.time() - started
    print()
    print(table(records))
    print(
        f"\n{sum(r.met is True for r in records)} of {sum(r.met is not None for r in records)} goals met; {elapsed / 60:.1f} min"
    )
    command = list(argv if argv is not None else sys.argv[1:])
    result = results_document(records, settings, command, elapsed, load_before, os.getloadavg())
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"results: {output}")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0
