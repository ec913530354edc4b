#!/usr/bin/env python
"""What the site's confined process costs: its start-up and its per-round exchange, against the same tasks
run in the FLARE process (the design before issue 24), on the spleen MMAR with synthetic data.

    .venv/bin/python bench/confined_site.py [--rounds 8] [--pairs 3]

Each pair builds a fresh site twice, in alternating order: once with its tasks in a confined child
(:class:`~clara_fl.fl.site.site_process.SiteProcess`, what every site runs now) and once in this process
(:class:`~clara_fl.fl.site.site_process.InProcessSite`, the baseline), then trains ``--rounds`` rounds of one
epoch from the same global weights. Reported, as medians over the pairs:

* start-up: ``init_training`` (process start, confinement, imports, build, local state) minus the baseline's
  build in an interpreter that has torch and MONAI imported already (as FLARE's process has);
* per round: the median round time minus the baseline's (the weights and meta written, read and sent back
  through the exchange files, the JSON messages, the log relay).

The results go to stdout and ``bench/results/confined_site.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness.comparison import rotated  # noqa: E402
from bench.harness.data import copy_mmar  # noqa: E402

OVERRIDES = {"roi_size": [16, 16, 16], "num_workers": 0, "num_interval_per_valid": 100}


def prepare(work: Path) -> tuple[Path, dict[str, Any]]:
    from clara_fl.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(work / "data", cases=8, sites=1, shape=(32, 32, 32), seed=0)
    site_values = {"DATA_ROOT": str(data.root), "DATASET_JSON": str(data.dataset_json), "SITE_NAME": "site-1"}
    return data.root, site_values


def run_arm(kind: str, work: Path, data_root: Path, site_values: dict[str, Any], rounds: int) -> dict[str, Any]:
    from clara_fl.fl.site.local_training import TrainingSettings
    from clara_fl.fl.site.site_process import InProcessSite, SiteProcess, SiteProcessSpec, settings_dict
    from clara_fl.fl.site.weights import network_weights
    from clara_fl.workflows.network import build_train_network

    app = copy_mmar(work / f"app_{kind}")
    settings = TrainingSettings(
        app_dir=str(app), overrides=OVERRIDES, site_values=site_values, data_roots=[str(data_root)]
    )
    weights = network_weights(build_train_network(str(app), overrides=OVERRIDES, extra_environment=site_values))
    started = time.perf_counter()
    backend: Any
    if kind == "confined":
        backend = SiteProcess(SiteProcessSpec(str(app), (str(data_root),)))
        backend.start()
    else:
        backend = InProcessSite()
    backend.call("init_training", {"settings": settings_dict(settings)})
    startup = time.perf_counter() - started
    times = []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            backend.call("train", {"data_kind": "WEIGHTS"}, {"data": weights, "meta": {}})
            times.append(time.perf_counter() - started)
    finally:
        backend.stop()
    return {"startup_s": startup, "round_s": statistics.median(times[1:] or times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "confined_site.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import monai  # noqa: F401  (FLARE's process has torch and MONAI imported before a site's first task)
    import torch  # noqa: F401

    from clara_fl.runtime.confinement import confinement_status

    work = Path(tempfile.mkdtemp(prefix="clara-fl-bench-confined-"))
    try:
        data_root, site_values = prepare(work)
        pairs = []
        for index in range(args.pairs):
            arms = rotated(("confined", "in_process"), index)
            pair = {kind: run_arm(kind, work, data_root, site_values, args.rounds) for kind in arms}
            pairs.append(pair)
            print(json.dumps(pair), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    startup = statistics.median(p["confined"]["startup_s"] - p["in_process"]["startup_s"] for p in pairs)
    per_round = statistics.median(p["confined"]["round_s"] - p["in_process"]["round_s"] for p in pairs)
    record = {
        "confinement": confinement_status("preferred"),
        "pairs": pairs,
        "startup_extra_s": round(startup, 3),
        "per_round_extra_s": round(per_round, 3),
        "round_s_in_process": round(statistics.median(p["in_process"]["round_s"] for p in pairs), 3),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2))
    print(
        f"confined site process vs tasks in FLARE's process ({record['confinement']}): "
        f"start-up +{startup:.2f} s, per round {per_round:+.3f} s "
        f"(round {record['round_s_in_process']:.2f} s in process), median of {args.pairs} pairs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
