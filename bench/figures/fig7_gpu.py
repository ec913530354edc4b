"""Figure 7, GPU throughput: only where a GPU is present (``make gpu-check`` measures it there); otherwise
"skipped: no GPU lent"."""

from __future__ import annotations

import subprocess

from bench.harness.figure import Context, Figure
from bench.harness.processes import base_env
from bench.harness.records import Record
from bench.harness.settings import PY


def measure(ctx: Context) -> list[Record]:
    probe = subprocess.run(
        [PY, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True, text=True, env=base_env(1)
    )
    has_gpu = probe.stdout.strip() == "True"
    note = (
        "skipped: no GPU lent"
        if not has_gpu
        else "skipped: GPU present, throughput figure not implemented in this suite"
    )
    record = Record(
        figure="7 GPU throughput",
        measure="training iterations/s on a GPU",
        baseline="hand-written script",
        kind="skipped",
        value=None,
        unit="",
        goal="(GPU only)",
        met=None,
        note=note,
    )
    return [record]


FIGURE = Figure("7", "GPU throughput", measure)
