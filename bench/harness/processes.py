"""Child processes timed from spawn to exit, with what their training log says along the way."""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import subprocess
import time
from pathlib import Path

FIRST_ITERATION = re.compile(r"Epoch: 1/\d+, Iter: 1/\d+ -- ")
VAL_DICE = re.compile(r"Metrics -- .*val_mean_dice: ([0-9.]+)")


@dataclasses.dataclass
class Run:
    name: str
    returncode: int
    wall_s: float
    cpu_s: float
    first_iteration_s: float | None
    final_val_dice: float | None
    log: Path


def base_env(threads: int) -> dict[str, str]:
    """This process's environment with ``threads`` OpenMP/MKL/OpenBLAS threads, unbuffered, and no probe."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("CLARA_FL_BENCH_PROBE", None)
    return env


def run_process(
    name: str, command: list[str], env: dict[str, str], log: Path, cwd: Path | None = None, timeout_s: int = 900
) -> Run:
    """Run ``command`` to completion; wall time from just before the spawn to the exit, and the arrival
    time of the first training iteration's log line (StatsHandler's ``Epoch: 1/N, Iter: 1/M``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    first = None
    dice = None
    deadline = time.monotonic() + timeout_s
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter()
            out.write(line)
            if first is None and FIRST_ITERATION.search(line):
                first = now - start
            found = VAL_DICE.search(line)
            if found:
                dice = float(found.group(1))
            if time.monotonic() > deadline:
                proc.kill()
                out.write(f"\n[bench] killed after {timeout_s} s\n")
                break
        code = proc.wait()
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(name, code, wall, cpu, first, dice, log)


def check(run: Run) -> Run:
    """``run`` itself when it exited 0.

    Raises:
        RuntimeError: it did not; the message ends with its log's last 25 lines.
    """
    if run.returncode != 0:
        tail = "".join(run.log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{run.name} failed with exit code {run.returncode} (log: {run.log}):\n{tail}")
    return run
