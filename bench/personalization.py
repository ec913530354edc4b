#!/usr/bin/env python
"""Personalization at every site: does each site's best clara-fl model beat the site alone and FedAvg's model?

A small in-process simulation, no FLARE (as ``bench/fedopt_defaults.py``): each site is clara-fl's own
:class:`LocalTraining` (the spleen MMAR's trainer, exactly what a site's confined process runs, with the job's
algorithm: its :class:`LocalAlgorithm` hooks, Ditto's personalized model, FedBN's local norm layers,
``keep_better_model``), the server is FedAvg's step-weighted average of the differences the sites send (a key no
site sends keeps its value, as FLARE's aggregator does for FedBN). Every arm gets the same budget (``rounds`` x
``local_epochs``; a site alone trains as many epochs) and every model is scored by one evaluator per site, the
MMAR's validation on that site's own validation cases (val_mean_dice):

- ``alone``: the site's model trained on its own data only;
- ``fedavg``: FedAvg's final global model;
- ``ditto[...]`` (one per variant): the Ditto run's final global model (``global``), each site's personalized model
  (``personal``) and the model the site kept with ``keep_better_model`` (``kept``: the better of global and
  personalized per round, by the site's validation, best over the rounds);
- ``fedbn``: the final global model with each site's own norm layers, and its kept model.

    .venv/bin/python bench/personalization.py --seeds 0,1,2 --rounds 5 --local-epochs 2 \\
        --ditto "ditto first_round:personal_start=first_round" --ditto ditto \\
        --out bench/results/personalization-5x2-2026-12-07.json

Diagnostics per Ditto variant (in the record): each round's mean loss and prox term of personal training per site,
the personal and the trainer's optimizer lr, each round's keep_better_model choice, and the personal model as
FLARE's cross-site validation scores it (a site rebuilt from its local state, its cross-site validator).

Data: ``clara-fl synth --heterogeneity strong`` (12 cases of 32^3 by default, as figure 8; ``--cases`` for more), 16^3
crops, lr 1e-3.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MMAR = ROOT / "clara_fl" / "resources" / "mmars" / "spleen_ct_seg"
METRIC = "val_mean_dice"
OVERRIDES = {"roi_size": [16, 16, 16], "learning_rate": 0.001, "num_workers": 0}
#: Ditto's variants: a label and its ``--algorithm-arg`` values (empty: the catalog's defaults)
DEFAULT_DITTO = ("ditto",)


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``label`` or ``label:k=v,k=v`` -> (label, algorithm args as the CLI would parse them)."""
    from clara_fl.recipes.algorithms import parse_algorithm_args

    label, _, rest = text.partition(":")
    pairs = [p for p in rest.split(",") if p]
    return label, parse_algorithm_args("ditto", pairs)


def make_data(folder: Path, sites: int, cases: int = 12) -> Path:
    from clara_fl.data.synthetic import make_synthetic_dataset

    made = make_synthetic_dataset(folder, cases=cases, sites=sites, shape=(32, 32, 32), heterogeneity="strong")
    return Path(made.root)


def site_training(
    data: Path,
    site: str,
    work: Path,
    seed: int,
    local_epochs: int,
    algorithm: str = "fedavg",
    algorithm_args: Mapping[str, Any] | None = None,
    keep_better: bool = False,
) -> Any:
    from clara_fl.fl.site.local_training import LocalTraining, TrainingSettings

    app = work / site
    shutil.copytree(MMAR, app, ignore=shutil.ignore_patterns("models", "eval"))
    settings = TrainingSettings(
        app_dir=str(app),
        overrides={**OVERRIDES, "determinism.random_seed": seed},
        site_values={"DATA_ROOT": str(data), "DATASET_JSON": str(data / f"dataset_{site}.json"), "SITE_NAME": site},
        code_policy="full",
        data_roots=[str(data)],
        local_epochs=local_epochs,
        algorithm=algorithm,
        algorithm_args=dict(algorithm_args or {}),
        keep_better_model=keep_better,
    )
    training = LocalTraining(settings)
    training.build()
    return training


class Scorers:
    """One FedAvg site training per site, used only to score weights with the MMAR's validation on its data."""

    def __init__(self, trainings: Mapping[str, Any]) -> None:
        self.trainings = trainings

    def score(self, site: str, weights: Mapping[str, np.ndarray]) -> float:
        metrics = self.trainings[site].validate("WEIGHTS", weights, "model_validate") or {}
        return round(float(metrics[METRIC]), 4)


def aggregate(global_weights: dict[str, np.ndarray], outcomes: list[Any]) -> dict[str, np.ndarray]:
    """FedAvg of the sites' differences, weighted by steps, per key over the sites that sent it."""
    new = dict(global_weights)
    for key, value in global_weights.items():
        senders = [o for o in outcomes if key in o.weights]
        total = sum(o.steps for o in senders)
        if not senders or total <= 0:
            continue
        diff = sum(np.asarray(o.weights[key], dtype=np.float64) * (o.steps / total) for o in senders)
        new[key] = (np.asarray(value, dtype=np.float64) + diff).astype(np.asarray(value).dtype)
    return new


def federate(
    sites: Mapping[str, Any], initial: dict[str, np.ndarray], rounds: int
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """``rounds`` rounds of FedAvg over ``sites``, then the final global model offered to each site's kept model (as
    a site's learner does when it validates it); returns the final global model and each round's diagnostics."""
    weights = initial
    log: list[dict[str, Any]] = []
    for _ in range(rounds):
        outcomes = {s: t.train("WEIGHTS", weights, {}) for s, t in sites.items()}
        entry: dict[str, Any] = {"kept": {s: o.kept for s, o in outcomes.items() if o.kept}}
        losses = {s: getattr(t.site_algorithm, "round_losses", None) for s, t in sites.items()}
        if any(losses.values()):
            entry["personal_losses"] = losses
        log.append(entry)
        weights = aggregate(weights, list(outcomes.values()))
    # the final global model, which a site validates after the last round (validate_global_model), to its kept model
    final = {s: t.keep_better_with("WEIGHTS", weights) for s, t in sites.items()}
    log.append({"kept_final_global": {s: k for s, k in final.items() if k}})
    return weights, log


def kept_weights(training: Any) -> dict[str, np.ndarray] | None:
    from clara_fl.fl.site.keep_better import KEPT_MODEL_FILE
    from clara_fl.runtime.checkpoint import load_checkpoint

    path = os.path.join(training.workflow.ckpt_dir, KEPT_MODEL_FILE)
    if not os.path.isfile(path):
        return None
    return {k: v.numpy() for k, v in load_checkpoint(path)["model"].items()}


def flare_path_scores(training: Any) -> float:
    """The personalized model as FLARE's cross-site validation sees it: a site rebuilt from its local state answers
    submit_model, and the site's cross-site validator (config_cross_validation.json) scores it."""
    from clara_fl.fl.site.local_training import LocalTraining, LocalValidation, ValidationSettings

    rebuilt = LocalTraining(training.settings)
    rebuilt.build()
    submitted = rebuilt.model_for_validation(None)
    rebuilt.close()
    s = training.settings
    validation = LocalValidation(
        ValidationSettings(
            app_dir=s.app_dir,
            overrides=s.overrides,
            site_values=s.site_values,
            code_policy=s.code_policy,
            data_roots=s.data_roots,
            algorithm=s.algorithm,
            algorithm_args=s.algorithm_args,
        )
    )
    return round(float(validation.validate(s.site_values["SITE_NAME"], submitted)[METRIC]), 4)


def as_used(training: Any, global_weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The global model as the site uses it: the layers its algorithm keeps local (FedBN's norm layers) its own."""
    from clara_fl.fl.site.weights import network_weights

    own = network_weights(training.workflow.network)
    return {**own, **training.site_algorithm.weights_to_load(global_weights)}


def run_seed(
    data: Path, names: tuple[str, ...], seed: int, rounds: int, local_epochs: int, variants: list[tuple[str, dict]]
) -> dict[str, Any]:
    from clara_fl.fl.site.weights import network_weights

    result: dict[str, Any] = {"seed": seed, "arms": {}, "diagnostics": {}}
    with tempfile.TemporaryDirectory(prefix="personalization_") as scratch:
        work = Path(scratch)

        def trainings(tag: str, algorithm: str = "fedavg", args: Any = None, keep: bool = False) -> dict[str, Any]:
            return {s: site_training(data, s, work / tag, seed, local_epochs, algorithm, args, keep) for s in names}

        started = time.time()
        alone = trainings("alone")
        initial = network_weights(alone[names[0]].workflow.network)  # the same seed: every arm's start
        for site, training in alone.items():
            weights = initial
            for _ in range(rounds):
                training.train("WEIGHTS", weights, {})
                weights = network_weights(training.workflow.network)
            training_weights = weights
            result.setdefault("alone_weights", {})[site] = training_weights
        scorers = Scorers(alone)
        result["arms"]["alone"] = {s: scorers.score(s, result["alone_weights"][s]) for s in names}
        # every site's model trained alone on every site: how much the sites differ
        result["alone_cross"] = {
            f"{own} alone": {s: scorers.score(s, result["alone_weights"][own]) for s in names} for own in names
        }
        del result["alone_weights"]
        print(f"  seed {seed} alone   {result['arms']['alone']}  ({time.time() - started:.0f} s)", flush=True)

        started = time.time()
        fedavg = trainings("fedavg")
        final, _ = federate(fedavg, initial, rounds)
        result["arms"]["fedavg"] = {s: scorers.score(s, final) for s in names}
        for t in fedavg.values():
            t.close()
        print(f"  seed {seed} fedavg  {result['arms']['fedavg']}  ({time.time() - started:.0f} s)", flush=True)

        for label, args in variants:
            started = time.time()
            sites = trainings(label.replace(" ", "_"), "ditto", args, keep=True)
            final, log = federate(sites, initial, rounds)
            result["arms"][f"{label} global"] = {s: scorers.score(s, final) for s in names}
            personal = {s: t.site_algorithm.model_for_validation(t.workflow) for s, t in sites.items()}
            result["arms"][f"{label} personal"] = {s: scorers.score(s, personal[s]) for s in names}
            kept = {s: kept_weights(t) for s, t in sites.items()}
            result["arms"][f"{label} kept"] = {s: scorers.score(s, w) for s, w in kept.items() if w is not None}
            result["diagnostics"][label] = {
                "args": args,
                "rounds": log,
                "personal_via_cross_site_validation": {s: flare_path_scores(t) for s, t in sites.items()},
                "personal_lr": {
                    s: [g["lr"] for g in t.site_algorithm.helper.optimizer.param_groups] for s, t in sites.items()
                },
                "trainer_lr": {
                    s: [g["lr"] for g in t.workflow.trainer.optimizer.param_groups] for s, t in sites.items()
                },
            }
            for t in sites.values():
                t.close()
            shown = {k: result["arms"][f"{label} {k}"] for k in ("personal", "kept", "global")}
            print(f"  seed {seed} {label}  {shown}  ({time.time() - started:.0f} s)", flush=True)

        started = time.time()
        fedbn = trainings("fedbn", "fedbn", keep=True)
        final, log = federate(fedbn, initial, rounds)
        result["arms"]["fedbn"] = {s: scorers.score(s, as_used(t, final)) for s, t in fedbn.items()}
        kept = {s: kept_weights(t) for s, t in fedbn.items()}
        result["arms"]["fedbn kept"] = {s: scorers.score(s, w) for s, w in kept.items() if w is not None}
        result["diagnostics"]["fedbn"] = {"rounds": log}
        for t in fedbn.values():
            t.close()
        print(f"  seed {seed} fedbn   {result['arms']['fedbn']} kept {result['arms']['fedbn kept']}", flush=True)
        print(f"  ({time.time() - started:.0f} s)", flush=True)
        for t in alone.values():
            t.close()
    return result


def goal(arms: Mapping[str, Mapping[str, float]], names: tuple[str, ...], run: str) -> dict[str, Any]:
    """Per site: the model the site keeps in ``run`` (its ``keep_better_model`` choice, the site's best clara-fl
    model) against the site alone and FedAvg's global model; met when it beats both at every site."""
    kept = arms[f"{run} kept"]
    per_site = {
        site: {
            "kept": kept.get(site, float("nan")),
            "vs_alone": round(kept.get(site, float("nan")) - arms["alone"][site], 4),
            "vs_fedavg": round(kept.get(site, float("nan")) - arms["fedavg"][site], 4),
        }
        for site in names
    }
    met = all(float(v["vs_alone"]) > 0 and float(v["vs_fedavg"]) > 0 for v in per_site.values())
    return {"met": met, "per_site": per_site}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--cases", type=int, default=12, help="synthetic cases over all sites (figure 8's: 12)")
    parser.add_argument(
        "--ditto",
        action="append",
        help="a Ditto variant, 'label' or 'label:k=v,...' (--algorithm-arg values); repeatable; "
        "default: one run at the catalog's defaults",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "personalization.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.disable(logging.INFO)  # every validation's metrics line; the results are printed at the end
    import torch

    torch.set_num_threads(1)
    variants = [parse_variant(v) for v in (args.ditto or DEFAULT_DITTO)]
    names = tuple(f"site-{k}" for k in range(1, args.sites + 1))
    results: dict[str, Any] = {
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "sites": args.sites,
        "cases": args.cases,
        "load_average_start": os.getloadavg(),
        "seeds": [],
    }
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="personalization_data_") as scratch:
        data = make_data(Path(scratch) / "data", args.sites, args.cases)
        for seed in (int(s) for s in args.seeds.split(",")):
            entry = run_seed(data, names, seed, args.rounds, args.local_epochs, variants)
            runs = [label for label, _ in variants] + ["fedbn"]
            entry["goal"] = {run: goal(entry["arms"], names, run) for run in runs}
            results["seeds"].append(entry)
            Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["wall_s"] = round(time.time() - started, 1)
    results["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    for entry in results["seeds"]:
        print(f"seed {entry['seed']}:")
        for arm, scores in entry["arms"].items():
            print(f"  {arm:28s} " + " ".join(f"{scores.get(s, float('nan')):.3f}" for s in names))
        for run, reached in entry["goal"].items():
            print(f"  goal, {run} kept: {'met' if reached['met'] else 'missed'}  {reached['per_site']}")
    print(f"mean over seeds, per site: {_means(results, names)}")
    print(f"results: {args.out} ({results['wall_s']} s)")
    return 0


def _means(results: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, list[float]]:
    arms = results["seeds"][0]["arms"]
    return {
        arm: [round(statistics.fmean(e["arms"][arm].get(s, float("nan")) for e in results["seeds"]), 4) for s in names]
        for arm in arms
    }


if __name__ == "__main__":
    raise SystemExit(main())
