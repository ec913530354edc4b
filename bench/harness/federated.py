"""FL jobs in FLARE's simulator (2 sites): the clara-fl job and its run, the probe's records and the server log's
round starts."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.harness.data import copy_mmar, mmar_settings, write_site_config
from bench.harness.processes import Run, base_env, check, run_process
from bench.harness.settings import PROBE, PY, Settings

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
ROUND_STARTED = re.compile(r"Round (\d+) started\.")


class JobRefused(Exception):
    """``clara-fl job create`` exited 2: it does not accept an option or its value (the message is its error)."""


def job_create_command(
    mmar: Path,
    job: Path,
    rounds: int,
    local_epochs: int,
    set_values: Sequence[str],
    options: Sequence[str] = (),
    sites: int = 2,
) -> list[str]:
    """``clara-fl job create`` of a job of ``rounds`` x ``local_epochs`` for ``sites`` sites (every one needed each
    round) with ``--set`` values and options."""
    return [
        PY,
        "-m",
        "clara_fl",
        "job",
        "create",
        "-m",
        str(mmar),
        "-o",
        str(job),
        "--num-rounds",
        str(rounds),
        "--local-epochs",
        str(local_epochs),
        "--min-clients",
        str(sites),
        "--set",
        *set_values,
        *options,
    ]


def simulate_command(job: Path, workspace: Path, site_config: Path, sites: int = 2) -> list[str]:
    """``clara-fl simulate`` of ``job`` on ``sites`` sites, all at once (``-t`` = ``-n``)."""
    return [
        PY,
        "-m",
        "clara_fl",
        "simulate",
        str(job),
        "-w",
        str(workspace),
        "-n",
        str(sites),
        "-t",
        str(sites),
        "--site-config",
        str(site_config),
    ]


def fl_env(settings: Settings, probe_dir: Path) -> dict[str, str]:
    """The simulated sites' environment: one site's threads, and bench/probe recording into ``probe_dir``."""
    env = base_env(settings.fl_threads)
    env["PYTHONPATH"] = os.pathsep.join([str(PROBE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["CLARA_FL_BENCH_PROBE"] = str(probe_dir)
    return env


def run_simulation(settings: Settings, name: str, command: list[str], out: Path) -> Run:
    """A simulator run under the probe (records in ``out/probe``, log in ``out/output.log``).

    Raises:
        RuntimeError: it failed.
    """
    return check(
        run_process(name, command, fl_env(settings, out / "probe"), out / "output.log", timeout_s=settings.timeout_s)
    )


def run_clara_fl(
    settings: Settings,
    data: Path,
    out: Path,
    rounds: int,
    val_interval: int,
    local_epochs: int | None = None,
    extra_set: Sequence[str] = (),
    job_options: Sequence[str] = (),
    sites: int = 2,
    site_options: Mapping[str, Any] | None = None,
) -> tuple[Run, Path]:
    """``clara-fl job create`` (plus ``job_options``) and ``clara-fl simulate`` on ``sites`` sites (default 2).

    Raises:
        JobRefused: job create exited 2 (an option or value it does not accept).
        RuntimeError: job create or the simulation failed otherwise.
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    job = out / "job"
    set_values = [*mmar_settings(settings, 1, val_interval)[1:], *extra_set]
    create = job_create_command(
        copy_mmar(out / "mmar"), job, rounds, local_epochs or settings.local_epochs, set_values, job_options, sites
    )
    made = subprocess.run(create, env=base_env(1), capture_output=True, text=True)
    if made.returncode == 2:
        raise JobRefused((made.stderr.strip().splitlines() or ["exit code 2"])[-1])
    if made.returncode != 0:
        raise RuntimeError(
            f"clara-fl job create failed ({made.returncode}):\n{made.stdout[-2000:]}{made.stderr[-2000:]}"
        )
    site_config = write_site_config(out / "clara_fl_site.json", data, site_options)
    run = run_simulation(settings, "clara-fl simulate", simulate_command(job, out / "ws", site_config, sites), out)
    return run, out / "ws"


def _log_time(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def round_starts(server_log: Path) -> dict[int, float]:
    """``Round N started.`` times from the FLARE server log (the banner line may sit under its record's line)."""
    starts: dict[int, float] = {}
    last: float | None = None
    for line in server_log.read_text(errors="replace").splitlines():
        stamp = LOG_TIME.match(line)
        if stamp:
            last = _log_time(stamp.group(1))
        found = ROUND_STARTED.search(line)
        if found and last is not None:
            starts.setdefault(int(found.group(1)), last)
    return starts


def read_probe(folder: Path) -> list[dict[str, Any]]:
    """The probe's records: ``folder``'s, and those the sites' confined processes wrote beside their jobs
    (``.bench_probe/`` anywhere under ``folder``'s parent, the run's folder)."""
    records = []
    confined = folder.parent.rglob(".bench_probe/probe-*.jsonl")
    for path in sorted([*folder.glob("probe-*.jsonl"), *confined]):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records
