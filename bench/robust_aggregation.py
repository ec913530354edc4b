#!/usr/bin/env python
"""Figure 11 (robust aggregation against one bad site) alone, at a budget of your choice.

    .venv/bin/python bench/robust_aggregation.py [--rounds 3] [--local-epochs 3] [--template clara_fedavg_cse]

The arms, the data and the score are figure 11's (bench/figures/fig11_robust.py, which ``bench/run.py --figures 11``
runs at its fixed budget): FedAvg on the 2 honest sites, then 3 sites of which site-3 has its update scaled by -10,
with plain FedAvg, ``median``, ``trimmed_mean:beta=0.34``, ``krum:f=0`` and ``multikrum:f=0,m=2``. The table goes to
stdout, the records (with the run's date, budget, machine and load average) to
``bench/results/robust_aggregation.json`` and the bars to ``bench/results/robust_aggregation.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run by path: the ``bench`` and ``tests`` packages sit in the checkout
    sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench.figures.fig11_robust import LOCAL_EPOCHS, ROUNDS, TEMPLATE, arm_bars, robust_records, run_arms  # noqa: E402
from bench.harness.records import table  # noqa: E402
from bench.harness.suite import machine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--local-epochs", type=int, default=LOCAL_EPOCHS)
    parser.add_argument("--template", default=TEMPLATE)
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "robust_aggregation.json"))
    args = parser.parse_args(argv)
    started, load_before = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="robust_bench_") as tmp:
        results = run_arms(Path(tmp), args.rounds, args.local_epochs, args.template)
    records = robust_records(results, args.rounds, args.local_epochs, args.template)
    picture = arm_bars(results, f"figure 11: one bad site of 3, {args.rounds} rounds x {args.local_epochs} epochs")
    print()
    print(table(records))
    document = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["bench/robust_aggregation.py", *(argv if argv is not None else sys.argv[1:])]),
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "template": args.template,
        "machine": machine(),
        "elapsed_s": round(time.time() - started, 1),
        "load_average_1_5_15": {
            "start": [round(v, 2) for v in load_before],
            "end": [round(v, 2) for v in os.getloadavg()],
        },
        "records": [dataclasses.asdict(record) for record in records],
        "picture": str(picture.relative_to(REPO)) if picture.is_relative_to(REPO) else str(picture),
    }
    Path(args.output).write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {args.output}, bars: {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
