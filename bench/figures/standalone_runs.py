"""The runs figures 1-3 share: ``clara-fl train``, the hand-written MONAI script (bench/handwritten_train.py)
and ``monai.bundle run`` on bench/bundle, the same training, in rotated order, ``pairs`` times."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from bench.harness.comparison import rotated
from bench.harness.data import copy_mmar
from bench.harness.figure import Context
from bench.harness.processes import Run, base_env, check, run_process
from bench.harness.settings import BENCH, PY, Settings
from bench.harness.training import clara_train_command

Pair = dict[str, Run]  # side -> its run in one rotation


def standalone_commands(settings: Settings, data: Path) -> dict[str, Callable[[Path], list[str]]]:
    """Each side's command, given its scratch folder."""
    roi = [str(settings.roi)] * 3
    bundle_cli = [PY, "-m", "monai.bundle"] if importlib.util.find_spec("fire") else [PY, str(BENCH / "bundle_run.py")]

    def clara(out: Path) -> list[str]:
        return clara_train_command(copy_mmar(out / "mmar"), settings, settings.epochs, 1, data, data / "dataset.json")

    def hand(out: Path) -> list[str]:
        return [
            PY,
            str(BENCH / "handwritten_train.py"),
            "--data-root",
            str(data),
            "--datalist",
            str(data / "dataset.json"),
            "--out",
            str(out / "models"),
            "--epochs",
            str(settings.epochs),
            "--roi",
            *roi,
            "--lr",
            str(settings.lr),
            "--val-interval",
            "1",
            "--num-workers",
            "0",
        ]

    def bundle(out: Path) -> list[str]:
        return [
            *bundle_cli,
            "run",
            "--config_file",
            str(BENCH / "bundle" / "configs" / "train.json"),
            "--meta_file",
            str(BENCH / "bundle" / "configs" / "metadata.json"),
            "--bundle_root",
            str(out),
            "--dataset_dir",
            str(data),
            "--epochs",
            str(settings.epochs),
            "--roi_size",
            json.dumps([settings.roi] * 3).replace(" ", ""),
            "--learning_rate",
            str(settings.lr),
            "--val_interval",
            "1",
            "--num_workers",
            "0",
        ]

    return {"clara-fl": clara, "hand-written": hand, "monai-bundle": bundle}


def run_standalone(ctx: Context) -> list[Pair]:
    """``settings.pairs`` rotations of the three sides, each in a fresh folder.

    Raises:
        RuntimeError: a side failed.
    """
    settings = ctx.settings
    ctx.log(
        f"figures 1-3: clara-fl train / hand-written / MONAI bundle, {settings.pairs} rotations, {settings.epochs} epochs"
    )
    commands = standalone_commands(settings, ctx.data)
    names = list(commands)
    env = base_env(settings.standalone_threads)
    pairs: list[Pair] = []
    for i in range(settings.pairs):
        order = rotated(names, i)
        runs: Pair = {}
        for name in order:
            out = ctx.work / "standalone" / f"{i}-{name}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            runs[name] = check(
                run_process(name, commands[name](out), env, out / "output.log", cwd=out, timeout_s=settings.timeout_s)
            )
        ctx.log(
            f"  pair {i + 1}/{settings.pairs} ({' -> '.join(order)}): "
            + ", ".join(
                f"{n} {runs[n].wall_s:.2f} s (1st iter {runs[n].first_iteration_s or float('nan'):.2f} s)"
                for n in names
            )
        )
        pairs.append(runs)
    return pairs


def standalone_pairs(ctx: Context) -> list[Pair]:
    """The rotations of the three sides, run once for whichever of figures 1-3 asks first."""
    return ctx.shared("standalone", run_standalone)


def same_training(pairs: list[Pair], a: str, b: str) -> bool:
    """Whether sides ``a`` and ``b`` ended with the same val_mean_dice in every pair (the same training)."""
    return all(p[a].final_val_dice is not None and p[a].final_val_dice == p[b].final_val_dice for p in pairs)
