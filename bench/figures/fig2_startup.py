"""Figure 2, start-up: process start to the first training iteration (the first ``Epoch: 1/N, Iter: 1/M`` line),
vs the hand-written script; goal <= +0.3 s. And ``clara-fl --help`` and ``clara-fl job create`` import none of
torch, MONAI, ignite, FLARE, numpy, scipy, nibabel, tensorboard (``python -X importtime``)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.figures.standalone_runs import Pair, standalone_pairs
from bench.harness.comparison import median
from bench.harness.figure import Context, Figure
from bench.harness.processes import base_env
from bench.harness.records import Record
from bench.harness.settings import MMAR, PY

HEAVY_MODULES = ("torch", "monai", "ignite", "nvflare", "numpy", "scipy", "nibabel", "tensorboard")


def first_iteration_record(pairs: list[Pair]) -> Record:
    deltas = [
        p["clara-fl"].first_iteration_s - p["hand-written"].first_iteration_s
        for p in pairs
        if p["clara-fl"].first_iteration_s is not None and p["hand-written"].first_iteration_s is not None
    ]
    value = median(deltas)
    return Record(
        figure="2 start-up",
        measure="process start -> first training iteration, clara-fl minus hand-written",
        baseline="bench/handwritten_train.py",
        kind="delta",
        value=value,
        unit="s",
        goal="<= +0.30 s",
        met=value is not None and value <= 0.3,
        samples=[round(d, 3) for d in deltas],
        detail={
            "clara_first_iteration_s": [p["clara-fl"].first_iteration_s for p in pairs],
            "hand_first_iteration_s": [p["hand-written"].first_iteration_s for p in pairs],
            "bundle_first_iteration_s": [p["monai-bundle"].first_iteration_s for p in pairs],
        },
    )


def imports_record(work: Path, repeats: int) -> Record:
    """``clara-fl --help`` and ``clara-fl job create``: which heavy packages they import, and how long they take.

    Raises:
        RuntimeError: one of the commands failed.
    """
    env = base_env(1)
    cases: dict[str, Callable[[int], list[str]]] = {
        "--help": lambda i: ["--help"],
        "job create": lambda i: ["job", "create", "-m", str(MMAR), "-o", str(work / "imports" / f"job-{i}"), "--force"],
    }
    found: dict[str, list[str]] = {}
    walls: dict[str, list[float]] = {}
    for label, args in cases.items():
        walls[label] = []
        for i in range(repeats):
            start = time.perf_counter()
            proc = subprocess.run(
                [PY, "-X", "importtime", "-m", "clara_fl", *args(i)], env=env, capture_output=True, text=True
            )
            walls[label].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise RuntimeError(f"clara-fl {label} failed: {proc.stderr[-2000:]}")
            imported = {
                line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in proc.stderr.splitlines()
                if line.startswith("import time:")
            }
            found[label] = sorted(set(HEAVY_MODULES) & imported)
    heavy = {k: v for k, v in found.items() if v}
    return Record(
        figure="2 start-up (CLI)",
        measure="heavy packages imported by `clara-fl --help` / `clara-fl job create`",
        baseline=f"none of {', '.join(HEAVY_MODULES)}",
        kind="value",
        value=None,
        unit="",
        goal="none imported",
        met=not heavy,
        note="none" if not heavy else "; ".join(f"{k}: {', '.join(v)}" for k, v in heavy.items()),
        detail={"imported_heavy": found, "median_wall_s": {k: round(median(v) or 0, 3) for k, v in walls.items()}},
    )


def measure(ctx: Context) -> list[Record]:
    return [first_iteration_record(standalone_pairs(ctx)), imports_record(ctx.work, repeats=1 if ctx.quick else 3)]


FIGURE = Figure("2", "start-up", measure)
