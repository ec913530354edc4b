#!/usr/bin/env python
"""Which FedOpt server optimizer settings learn within a few rounds on the shipped MMARs (both train with Adam).

A small in-process simulation, no FLARE: each site is clara-fl's own :class:`LocalTraining` (the MMAR's trainer,
exactly what a site's confined process runs), the server step is clara-fl's :class:`FedOptShareableGenerator`
(FLARE's FedOpt step: the step-weighted average of the sites' weight differences taken as minus a gradient; the
buffers averaged). After every round the global model is validated at every site; the table gives the mean key
metric per round for FedAvg (the server adding the average, i.e. SGD lr 1 without momentum) and each candidate.

    .venv/bin/python bench/fedopt_defaults.py --rounds 4 --out bench/results/fedopt-defaults.json

Data: ``clara-fl synth`` (12 cases of 32^3, 2 identical sites) for the spleen MMAR with 16^3 crops, and the
classification analogue (36 images of 32^2) for the chest X-ray MMAR; lr 1e-3, 1 local epoch per round, seed 0.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MMARS = ROOT / "clara_fl" / "resources" / "mmars"
#: (name, server optimizer, lr, momentum); None: FedAvg (the plain average added)
CANDIDATES: tuple[tuple[str, str | None, float, float], ...] = (
    ("fedavg", None, 1.0, 0.0),
    ("sgd lr 1.0 m 0.6", "sgd", 1.0, 0.6),
    ("sgd lr 1.0 m 0.9", "sgd", 1.0, 0.9),
    ("adam lr 1e-2", "adam", 1e-2, 0.0),
    ("adam lr 1e-3", "adam", 1e-3, 0.0),
)


def make_data(kind: str, folder: Path) -> Path:
    if kind == "spleen":
        from clara_fl.data.synthetic import make_synthetic_dataset

        return Path(make_synthetic_dataset(folder, cases=12, sites=2, shape=(32, 32, 32)).root)
    from clara_fl.data.synthetic_classification import make_classification_dataset

    return Path(make_classification_dataset(folder, cases=36, sites=2, size=32).root)


MMAR_SETTINGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "spleen": ("spleen_ct_seg", "val_mean_dice", {"roi_size": [16, 16, 16], "learning_rate": 0.001}),
    "chest": ("chest_xray_cls", "val_auc", {"batch_size": 4, "learning_rate": 0.001}),
}


def site_training(kind: str, data: Path, site: str, work: Path) -> Any:
    from clara_fl.fl.site.local_training import LocalTraining, TrainingSettings

    mmar_name, _, values = MMAR_SETTINGS[kind]
    app = work / site
    shutil.copytree(MMARS / mmar_name, app, ignore=shutil.ignore_patterns("models", "eval"))
    settings = TrainingSettings(
        app_dir=str(app),
        overrides={**values, "num_workers": 0, "determinism.random_seed": 0},
        site_values={"DATA_ROOT": str(data), "DATASET_JSON": str(data / f"dataset_{site}.json"), "SITE_NAME": site},
        code_policy="full",
        data_roots=[str(data)],
        local_epochs=1,
    )
    training = LocalTraining(settings)
    training.build()
    return training


def server_step(name: str, optimizer: str | None, lr: float, momentum: float, network: Any) -> Any:
    """A function (global weights, averaged difference) -> new global weights."""
    import numpy as np
    import torch

    from clara_fl.fl.server.fedopt import FedOptShareableGenerator

    if optimizer is None:
        return lambda weights, diff: {k: weights[k] + diff[k] for k in weights}
    generator = FedOptShareableGenerator(server_optimizer=optimizer, lr=lr, momentum=momentum)
    generator.device = torch.device("cpu")
    generator.model = copy.deepcopy(network)
    options: dict[str, Any] = {"lr": lr} | ({"momentum": momentum} if optimizer == "sgd" else {})
    optimizer_class = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    generator.optimizer = optimizer_class(generator.model.parameters(), **options)
    parameters = {k for k, _ in generator.model.named_parameters()}

    def step(weights: dict[str, Any], diff: dict[str, Any]) -> dict[str, Any]:
        generator._load_global(weights)
        state, _ = generator.server_update({k: v for k, v in diff.items() if k in parameters})
        new = {k: v.numpy().copy() for k, v in state.items() if k in parameters}
        for key in weights:  # buffers: averaged, as FLARE's generator does
            if key not in parameters:
                new[key] = (weights[key] + diff[key]).astype(np.asarray(weights[key]).dtype)
        return new

    return step


def run_arm(kind: str, data: Path, candidate: tuple[str, str | None, float, float], rounds: int) -> list[float]:
    """The mean key metric of the global model over the sites, before round 1 and after every round."""
    from clara_fl.fl.site.weights import network_weights, unwrap

    name, optimizer, lr, momentum = candidate
    metric = MMAR_SETTINGS[kind][1]
    with tempfile.TemporaryDirectory(prefix="fedopt_") as work:
        sites = {s: site_training(kind, data, s, Path(work)) for s in ("site-1", "site-2")}
        first = sites["site-1"]
        weights = network_weights(first.workflow.network)
        step = server_step(name, optimizer, lr, momentum, unwrap(first.workflow.network))

        def score() -> float:
            values = [t.validate("WEIGHTS", weights, "model_validate") or {} for t in sites.values()]
            return statistics.fmean(float(v[metric]) for v in values)

        curve = [score()]
        for _ in range(rounds):
            outcomes = [t.train("WEIGHTS", weights, {}) for t in sites.values()]
            total = sum(o.steps for o in outcomes)
            diff = {k: sum(o.weights[k] * (o.steps / total) for o in outcomes) for k in weights}
            weights = step(weights, diff)
            curve.append(score())
        for training in sites.values():
            training.close()
    return curve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--mmars", default="spleen,chest")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fedopt-defaults.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    results: dict[str, Any] = {"rounds": args.rounds, "local_epochs": 1, "curves": {}}
    with tempfile.TemporaryDirectory(prefix="fedopt_data_") as scratch:
        for kind in args.mmars.split(","):
            data = make_data(kind, Path(scratch) / kind)
            results["curves"][kind] = {}
            for candidate in CANDIDATES:
                started = time.time()
                curve = run_arm(kind, data, candidate, args.rounds)
                results["curves"][kind][candidate[0]] = [round(v, 4) for v in curve]
                shown = " ".join(f"{v:.3f}" for v in curve)
                print(f"{kind:7s} {candidate[0]:18s} {shown}   ({time.time() - started:.0f} s)", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
