#!/usr/bin/env python
"""clara-fl's benchmark suite: every figure side by side with a named baseline, in one run.

    make bench                                   # the full suite (about 15-25 minutes on 2 CPU cores)
    .venv/bin/python bench/run.py --quick        # tiny settings, one pair (the smoke test's mode)
    .venv/bin/python bench/run.py --figures 1,2,3 --pairs 3

Every timing is an A/B comparison made in the same run: the two sides alternate (A B, B A, ...),
each pair gives a ratio or a difference, and the verdict is the median over the pairs, never an
absolute time. The table goes to stdout, the records to ``bench/results/latest.json``.

Figures (goals for a 2-core CPU machine):

1. standalone overhead   ``clara-fl train`` vs the same training written by hand (bench/handwritten_train.py),
                         whole process, import included: wall ratio <= 1.05
2. start-up              process start to the first training iteration, vs the hand-written script: <= +0.3 s;
                         ``clara-fl --help`` and ``clara-fl job create`` import no torch/MONAI/ignite/FLARE
3. bundle peer           ``clara-fl train`` vs ``python -m monai.bundle run`` on bench/bundle: ratio <= 1.00
4. FL round overhead     FLARE simulator, 2 sites: wall per round minus the sites' local train + validate time
                         (the time inside ignite's ``Engine.run``, measured by bench/probe in every site
                         process): <= 0.5 s, and <= half of the official MONAI path's (NVFlare's Client API
                         + ``monai.fl.client.MonaiAlgo`` on bench/bundle, same simulator)
5. memory                peak RSS of a site process (vs the MONAI path's); RSS growth per round over the 20
                         rounds of figure 4 (least-squares slope after 5 warm-up rounds): <= 1 MB
6. FL quality            FedAvg of 2 sites (10 rounds x 5 epochs) vs centralized training on the union of
                         their data (50 epochs), same seed: ratio of final val_mean_dice (one neutral
                         evaluator, bench/handwritten_train.py --eval-weights), median over seeds 0-2 >= 0.97
7. GPU throughput        only where a GPU is present; otherwise "skipped: no GPU lent"
8. algorithms, identical / differing sites
                         the same compute budget (rounds x local epochs = epochs) for centralized ``clara-fl
                         train`` on the union, each site alone, and FedAvg, FedProx, FedOpt, SCAFFOLD, Ditto,
                         FedBN (``clara-fl job create --algorithm``, ``clara-fl simulate``, 2 sites), on
                         ``clara-fl synth`` data with ``--heterogeneity none`` and ``strong``: mean and
                         worst-site Dice on each site's validation data (FL: the cross-site table, global model;
                         Ditto: each site's personalized model on its own data). Goals: FedAvg >= 0.97 of
                         centralized on identical sites; on differing sites the best algorithm beats FedAvg and
                         beats every site alone on that site's own validation data. An algorithm the CLI refuses
                         (job create exits 2) is reported as skipped
9. homomorphic encryption
                         the same FedAvg job with ``--he`` and without: median round time ratio <= 2.0; bytes a
                         site sends per round (its sockets, counted by bench/probe), with and without
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CACHE = BENCH / ".cache"
RESULTS = BENCH / "results"
MMAR = ROOT / "mmars" / "spleen_ct_seg"
PROBE = BENCH / "probe"
PY = sys.executable

HEAVY_MODULES = ("torch", "monai", "ignite", "nvflare", "numpy", "scipy", "nibabel", "tensorboard")
FIRST_ITERATION = re.compile(r"Epoch: 1/\d+, Iter: 1/\d+ -- ")
VAL_DICE = re.compile(r"Metrics -- .*val_mean_dice: ([0-9.]+)")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
ROUND_STARTED = re.compile(r"Round (\d+) started\.")


# -- settings -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    pairs: int = 7  # standalone A/B pairs (figures 1-3)
    epochs: int = 3  # standalone epochs
    fl_pairs: int = 3  # FL A/B pairs (figures 4-6)
    rounds: int = 20  # FL rounds (figure 5 wants 20)
    local_epochs: int = 1
    quality_rounds: int = 10  # figure 6: FedAvg rounds x local epochs = the centralized epochs
    quality_local_epochs: int = 5
    quality_seeds: tuple[int, ...] = (0, 1, 2)  # figure 6: one FedAvg / centralized pair per seed
    warmup_rounds: int = 2  # rounds left out of the round-overhead figure (first tasks)
    memory_warmup_rounds: int = 5  # rounds left out of the RSS slope (allocator and caches fill up)
    roi: int = 16
    shape: int = 32
    cases: int = 12
    lr: float = 1e-3
    standalone_threads: int = 2  # OMP_NUM_THREADS for both sides of figures 1-3 (= the cores)
    fl_threads: int = 1  # per simulated site (cores / 2 sites), as clara-fl simulate sets it
    timeout_s: int = 900
    algorithm_rounds: int = 10  # figure 8: rounds x local epochs = the epochs of centralized and site-alone training
    algorithm_local_epochs: int = 3
    algorithm_seed: int = 0
    he_rounds: int = 6  # figure 9: rounds of each of the two jobs (round 0 and the last are not timed)

    @property
    def mode(self) -> str:
        return "quick" if self == QUICK else "full" if self == Settings() else "custom"


QUICK = Settings(
    pairs=1,
    epochs=2,
    fl_pairs=1,
    rounds=4,
    warmup_rounds=1,
    memory_warmup_rounds=1,
    quality_rounds=2,
    quality_local_epochs=1,
    quality_seeds=(0,),
    algorithm_rounds=2,
    algorithm_local_epochs=1,
    he_rounds=3,
)


@dataclasses.dataclass
class Record:
    """One figure: what was compared with what, the median over pairs, and its goal."""

    figure: str
    measure: str
    baseline: str
    kind: str  # "ratio", "delta", "value" or "skipped"
    value: float | None
    unit: str
    goal: str
    met: bool | None  # None: no goal (informational) or skipped
    samples: list[Any] = dataclasses.field(default_factory=list)
    note: str = ""
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def shown_value(self) -> str:
        if self.value is None or self.kind == "dice":
            return self.note or "-"
        if self.kind == "delta":
            return f"{self.value:+.2f} {self.unit}".strip()
        if self.kind == "ratio":
            return f"{self.value:.3f}"
        return f"{self.value:.2f} {self.unit}".strip()


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# -- processes --------------------------------------------------------------------------------------


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
    if run.returncode != 0:
        tail = "".join(run.log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{run.name} failed with exit code {run.returncode} (log: {run.log}):\n{tail}")
    return run


# -- data and MMAR -------------------------------------------------------------------------------


def prepare_data(settings: Settings, heterogeneity: str = "none") -> Path:
    """Synthetic spleen-like CT (cached): ``dataset.json`` is the union of the two sites' datalists; with
    ``heterogeneity`` mild or strong the two sites differ (``sites.json``, figure 8)."""
    suffix = "" if heterogeneity == "none" else f"-{heterogeneity}"
    root = CACHE / f"data-{settings.shape}-{settings.cases}{suffix}"
    stamp = root / ".complete"
    if not stamp.is_file():
        shutil.rmtree(root, ignore_errors=True)
        code = (
            "import sys; from clara_fl.data.synthetic import make_synthetic_dataset; "
            f"make_synthetic_dataset(sys.argv[1], cases={settings.cases}, sites=2, shape=({settings.shape},) * 3, "
            f"heterogeneity={heterogeneity!r})"
        )
        subprocess.run([PY, "-c", code, str(root)], check=True, env=base_env(2))
        stamp.write_text("ok\n")
    return root


def copy_mmar(dest: Path) -> Path:
    """The spleen MMAR's config/ and docs/ (never its models/ or eval/ outputs) in a scratch folder."""
    shutil.rmtree(dest, ignore_errors=True)
    for folder in ("config", "docs", "commands"):
        if (MMAR / folder).is_dir():
            shutil.copytree(MMAR / folder, dest / folder)
    return dest


def mmar_settings(settings: Settings, epochs: int, val_interval: int) -> list[str]:
    """The variables every side of a comparison uses (as ``--set`` values)."""
    roi = settings.roi
    return [
        f"epochs={epochs}",
        f"roi_size=[{roi},{roi},{roi}]",
        f"learning_rate={settings.lr}",
        "num_workers=0",
        f"num_interval_per_valid={val_interval}",
    ]


# -- figures 1-3: standalone -------------------------------------------------------------------


def standalone_commands(settings: Settings, data: Path, work: Path) -> dict[str, Callable[[Path], list[str]]]:
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


def run_standalone(settings: Settings, data: Path, work: Path, log: Callable[[str], None]) -> list[dict[str, Run]]:
    commands = standalone_commands(settings, data, work)
    names = list(commands)
    env = base_env(settings.standalone_threads)
    pairs: list[dict[str, Run]] = []
    for i in range(settings.pairs):
        order = names[i % len(names) :] + names[: i % len(names)]  # rotate: every side goes first in turn
        runs: dict[str, Run] = {}
        for name in order:
            out = work / "standalone" / f"{i}-{name}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            runs[name] = check(
                run_process(name, commands[name](out), env, out / "output.log", cwd=out, timeout_s=settings.timeout_s)
            )
        log(
            f"  pair {i + 1}/{settings.pairs} ({' -> '.join(order)}): "
            + ", ".join(
                f"{n} {runs[n].wall_s:.2f} s (1st iter {runs[n].first_iteration_s or float('nan'):.2f} s)"
                for n in names
            )
        )
        pairs.append(runs)
    return pairs


def _same_training(pairs: list[dict[str, Run]], a: str, b: str) -> bool:
    return all(p[a].final_val_dice is not None and p[a].final_val_dice == p[b].final_val_dice for p in pairs)


def figure_standalone(pairs: list[dict[str, Run]]) -> Record:
    ratios = [p["clara-fl"].wall_s / p["hand-written"].wall_s for p in pairs]
    cpu = [p["clara-fl"].cpu_s / p["hand-written"].cpu_s for p in pairs]
    value = median(ratios)
    return Record(
        figure="1 standalone overhead",
        measure="wall time, whole process (clara-fl train / hand-written MONAI script)",
        baseline="bench/handwritten_train.py",
        kind="ratio",
        value=value,
        unit="x",
        goal="<= 1.05",
        met=value is not None and value <= 1.05,
        samples=[round(r, 4) for r in ratios],
        detail={
            "clara_wall_s": [round(p["clara-fl"].wall_s, 3) for p in pairs],
            "hand_wall_s": [round(p["hand-written"].wall_s, 3) for p in pairs],
            "cpu_ratio_median": median(cpu),
            "same_training": _same_training(pairs, "clara-fl", "hand-written"),
            "final_val_mean_dice": pairs[0]["clara-fl"].final_val_dice,
        },
    )


def figure_standalone_cpu(pairs: list[dict[str, Run]]) -> Record:
    """The same comparison in CPU time (user + system): less sensitive to other load on a shared machine."""
    ratios = [p["clara-fl"].cpu_s / p["hand-written"].cpu_s for p in pairs]
    return Record(
        figure="1 standalone overhead (CPU)",
        measure="CPU time (user+sys), whole process (clara-fl train / hand-written MONAI script)",
        baseline="bench/handwritten_train.py",
        kind="ratio",
        value=median(ratios),
        unit="x",
        goal="(reported)",
        met=None,
        samples=[round(r, 4) for r in ratios],
        detail={
            "clara_cpu_s": [round(p["clara-fl"].cpu_s, 3) for p in pairs],
            "hand_cpu_s": [round(p["hand-written"].cpu_s, 3) for p in pairs],
        },
    )


def figure_startup(pairs: list[dict[str, Run]]) -> Record:
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


def figure_bundle(pairs: list[dict[str, Run]]) -> Record:
    ratios = [p["clara-fl"].wall_s / p["monai-bundle"].wall_s for p in pairs]
    value = median(ratios)
    cli = (
        "python -m monai.bundle run"
        if importlib.util.find_spec("fire")
        else "monai.bundle.scripts.run (bench/bundle_run.py: fire not installed)"
    )
    return Record(
        figure="3 bundle peer",
        measure="wall time, whole process (clara-fl train / MONAI bundle run)",
        baseline=f"{cli} on bench/bundle",
        kind="ratio",
        value=value,
        unit="x",
        goal="<= 1.00",
        met=value is not None and value <= 1.0,
        samples=[round(r, 4) for r in ratios],
        detail={
            "bundle_wall_s": [round(p["monai-bundle"].wall_s, 3) for p in pairs],
            "same_training": _same_training(pairs, "clara-fl", "monai-bundle"),
        },
    )


def figure_imports(work: Path, repeats: int) -> Record:
    """``clara-fl --help`` and ``clara-fl job create``: which heavy packages they import, and how long they take."""
    env = base_env(1)
    cases = {
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


# -- figures 4-6: federated -------------------------------------------------------------------


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


def analyse_fl(server_log: Path, probe: list[dict[str, Any]], warmup: int, memory_warmup: int) -> dict[str, Any]:
    """Per round r (warm-up rounds and the last one left out): the wall time from round r's start to
    round r+1's, the sites' engine time in that window (the slower site's), and their difference; the
    part of that difference spent inside the FL wrapper (learner / MonaiAlgo) outside the engines."""
    starts = round_starts(server_log)
    engines = [r for r in probe if r.get("kind", "engine") == "engine" and r["site"] != "?"]
    wrappers = [r for r in probe if r.get("kind") == "wrapper" and r["site"] != "?"]
    sites = sorted({r["site"] for r in engines})
    rounds = []
    for r in sorted(starts):
        if r < warmup or r + 1 not in starts:
            continue
        lo, hi = starts[r], starts[r + 1]

        def total(records: list[dict[str, Any]], site: str, lo: float = lo, hi: float = hi) -> float:
            return sum(rec["end"] - rec["start"] for rec in records if rec["site"] == site and lo <= rec["start"] < hi)

        local = {site: total(engines, site) for site in sites}
        glue = {site: max(0.0, total(wrappers, site) - local[site]) for site in sites} if wrappers else {}
        slowest = max(local.values()) if local else 0.0
        rounds.append(
            {
                "round": r,
                "wall_s": hi - lo,
                "local_s": slowest,
                "overhead_s": hi - lo - slowest,
                "wrapper_glue_s": max(glue.values()) if glue else None,
                "per_site_local_s": local,
            }
        )
    memory = {}
    for site in sites:
        trains = [rec for rec in engines if rec["site"] == site and rec["engine"].endswith("Trainer")]
        rss = [rec["rss"] / 2**20 for rec in trains]  # MiB after each round's training
        memory[site] = {
            "peak_rss_mb": max(rec["peak_rss"] for rec in probe if rec["site"] == site) / 2**20,
            "rss_after_round_mb": [round(v, 1) for v in rss],
            "threads_after_round": [rec.get("threads") for rec in trains],
            "growth_mb_per_round": slope(rss[memory_warmup:]),
            "growth_incl_warmup_mb_per_round": (rss[-1] - rss[0]) / (len(rss) - 1) if len(rss) > 1 else None,
        }
    return {
        "rounds": rounds,
        "median_wall_s": median([r["wall_s"] for r in rounds]),
        "median_local_s": median([r["local_s"] for r in rounds]),
        "median_overhead_s": median([r["overhead_s"] for r in rounds]),
        "median_wrapper_glue_s": median([r["wrapper_glue_s"] for r in rounds]),
        "memory": memory,
        "rounds_started": len(starts),
    }


def slope(values: Sequence[float]) -> float | None:
    """Least-squares slope per step (MB per round)."""
    n = len(values)
    if n < 2:
        return None
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    sxx = sum((i - mean_x) ** 2 for i in range(n))
    return sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) / sxx


def fl_env(settings: Settings, probe_dir: Path) -> dict[str, str]:
    env = base_env(settings.fl_threads)
    env["PYTHONPATH"] = os.pathsep.join([str(PROBE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["CLARA_FL_BENCH_PROBE"] = str(probe_dir)
    return env


def run_clara_fl(
    settings: Settings,
    data: Path,
    out: Path,
    rounds: int,
    val_interval: int,
    local_epochs: int | None = None,
    extra_set: Sequence[str] = (),
    job_options: Sequence[str] = (),
) -> tuple[Run, Path]:
    """``clara-fl job create`` (plus ``job_options``) and ``clara-fl simulate`` on 2 sites.

    Raises:
        JobRefused: job create exited 2 (an option or value it does not accept).
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    mmar = copy_mmar(out / "mmar")
    job = out / "job"
    made = subprocess.run(
        [
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
            str(local_epochs or settings.local_epochs),
            "--min-clients",
            "2",
            "--set",
            *mmar_settings(settings, 1, val_interval)[1:],
            *extra_set,
            *job_options,
        ],
        env=base_env(1),
        capture_output=True,
        text=True,
    )
    if made.returncode == 2:
        raise JobRefused((made.stderr.strip().splitlines() or ["exit code 2"])[-1])
    if made.returncode != 0:
        raise RuntimeError(
            f"clara-fl job create failed ({made.returncode}):\n{made.stdout[-2000:]}{made.stderr[-2000:]}"
        )
    site_file = out / "clara_fl_site.json"
    site_file.write_text(
        json.dumps({"environment": {"DATA_ROOT": str(data), "DATASET_JSON": str(data / "dataset_{SITE_NAME}.json")}})
    )
    command = [
        PY,
        "-m",
        "clara_fl",
        "simulate",
        str(job),
        "-w",
        str(out / "ws"),
        "-n",
        "2",
        "-t",
        "2",
        "--site-config",
        str(site_file),
    ]
    run = check(
        run_process(
            "clara-fl simulate",
            command,
            fl_env(settings, out / "probe"),
            out / "output.log",
            timeout_s=settings.timeout_s,
        )
    )
    return run, out / "ws"


class JobRefused(Exception):
    """``clara-fl job create`` exited 2: it does not accept an option or its value (the message is its error)."""


def run_monai_fl(settings: Settings, data: Path, out: Path, rounds: int, val_interval: int) -> tuple[Run, Path]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    roi = settings.roi
    overrides = [
        f"roi_size=[{roi},{roi},{roi}]",
        f"learning_rate={settings.lr}",
        "num_workers=0",
        f"val_interval={val_interval}",
    ]
    made = subprocess.run(
        [
            PY,
            str(BENCH / "monai_fl" / "make_job.py"),
            str(out / "job" / "monai_spleen"),
            "--rounds",
            str(rounds),
            "--local-epochs",
            str(settings.local_epochs),
            "--data-root",
            str(data),
            "--datalist-pattern",
            str(data / "dataset_{SITE_NAME}.json"),
            *[a for o in overrides for a in ("--set", o)],
        ],
        check=True,
        env=base_env(1),
        capture_output=True,
        text=True,
    )
    job = Path(made.stdout.strip().splitlines()[-1])
    command = [PY, "-m", "nvflare.cli", "simulator", str(job), "-w", str(out / "ws"), "-n", "2", "-t", "2"]
    run = check(
        run_process(
            "MONAI FL (MonaiAlgo)",
            command,
            fl_env(settings, out / "probe"),
            out / "output.log",
            timeout_s=settings.timeout_s,
        )
    )
    return run, out / "ws"


def run_fl(settings: Settings, data: Path, work: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """A/B pairs of the same FedAvg (2 sites, ``rounds`` x ``local_epochs``) through clara-fl and the MONAI path."""
    val_interval = 1000  # one validation per round at each site (before training), in both paths
    sides = {"clara-fl": run_clara_fl, "monai": run_monai_fl}
    pairs = []
    for i in range(settings.fl_pairs):
        order = list(sides) if i % 2 == 0 else list(sides)[::-1]
        result: dict[str, Any] = {}
        for name in order:
            out = work / "fl" / f"{i}-{name}"
            run, workspace = sides[name](settings, data, out, settings.rounds, val_interval)
            analysis = analyse_fl(
                workspace / "server" / "log.txt",
                read_probe(out / "probe"),
                settings.warmup_rounds,
                settings.memory_warmup_rounds,
            )
            if analysis["rounds_started"] < settings.rounds:
                raise RuntimeError(
                    f"{name}: only {analysis['rounds_started']} of {settings.rounds} rounds started (log {run.log})"
                )
            analysis["process_wall_s"] = run.wall_s
            analysis["workspace"] = str(workspace)
            result[name] = analysis
        log(
            f"  pair {i + 1}/{settings.fl_pairs} ({' -> '.join(order)}): "
            + ", ".join(
                f"{n} round {result[n]['median_wall_s']:.2f} s = local {result[n]['median_local_s']:.2f} + overhead {result[n]['median_overhead_s']:.2f} s"
                f" (wrapper glue {result[n]['median_wrapper_glue_s'] or 0:.2f} s)"
                for n in sides
            )
        )
        pairs.append(result)
    return pairs


def figure_fl_overhead(pairs: list[dict[str, Any]], settings: Settings) -> list[Record]:
    clara = [p["clara-fl"]["median_overhead_s"] for p in pairs]
    monai = [p["monai"]["median_overhead_s"] for p in pairs]
    ratios = [c / m for c, m in zip(clara, monai, strict=True) if m]
    value, ratio = median(clara), median(ratios)
    detail = {
        "rounds": settings.rounds,
        "rounds_measured": f"{settings.warmup_rounds}..{settings.rounds - 2}",
        "clara_round_wall_s": [round(p["clara-fl"]["median_wall_s"], 3) for p in pairs],
        "clara_round_local_s": [round(p["clara-fl"]["median_local_s"], 3) for p in pairs],
        "monai_round_wall_s": [round(p["monai"]["median_wall_s"], 3) for p in pairs],
        "monai_round_local_s": [round(p["monai"]["median_local_s"], 3) for p in pairs],
        "monai_overhead_s": [round(m, 3) for m in monai],
        "clara_learner_glue_s": [_round(p["clara-fl"]["median_wrapper_glue_s"]) for p in pairs],
        "monai_algo_glue_s": [_round(p["monai"]["median_wrapper_glue_s"]) for p in pairs],
        "note": "overhead = FLARE (task dispatch, 2 x 18 MB transfers, server polling, aggregation) + the wrapper's glue "
        "(time inside ClaraLearner.train/validate or MonaiAlgo.train/evaluate/get_weights outside the ignite engines)",
    }
    return [
        Record(
            figure="4 FL round overhead",
            measure="per round: wall minus the sites' local train+validate (clara-fl, simulator, 2 sites)",
            baseline="absolute (median of per-round medians)",
            kind="value",
            value=value,
            unit="s",
            goal="<= 0.50 s",
            met=value is not None and value <= 0.5,
            samples=[round(c, 3) for c in clara],
            detail=detail,
        ),
        Record(
            figure="4 FL round overhead vs MONAI",
            measure="clara-fl overhead / MONAI path overhead, per pair",
            baseline="NVFlare Client API + monai.fl.client.MonaiAlgo on bench/bundle (FedAvgRecipe defaults)",
            kind="ratio",
            value=ratio,
            unit="x",
            goal="<= 0.50",
            met=ratio is not None and ratio <= 0.5,
            samples=[round(r, 3) for r in ratios],
            detail={"monai_overhead_s": [round(m, 3) for m in monai]},
        ),
    ]


def figure_memory(pairs: list[dict[str, Any]], settings: Settings) -> list[Record]:
    def per_pair(side: str, key: str) -> list[float]:
        return [max(site[key] for site in p[side]["memory"].values() if site[key] is not None) for p in pairs]

    peak, peak_monai = per_pair("clara-fl", "peak_rss_mb"), per_pair("monai", "peak_rss_mb")
    growth, growth_monai = per_pair("clara-fl", "growth_mb_per_round"), per_pair("monai", "growth_mb_per_round")
    value = median(growth)
    return [
        Record(
            figure="5 memory: peak RSS",
            measure="peak RSS of a site process (the larger site), clara-fl / MONAI path",
            baseline="MONAI path site process",
            kind="ratio",
            value=median([a / b for a, b in zip(peak, peak_monai, strict=True)]),
            unit="x",
            goal="(reported)",
            met=None,
            samples=[round(v, 1) for v in peak],
            note="",
            detail={
                "clara_peak_rss_mb": [round(v, 1) for v in peak],
                "monai_peak_rss_mb": [round(v, 1) for v in peak_monai],
            },
        ),
        Record(
            figure="5 memory: RSS growth",
            measure=f"RSS growth per round after warm-up (least-squares slope over rounds {settings.memory_warmup_rounds}..{settings.rounds - 1}, larger site)",
            baseline=f"MONAI path: {', '.join(f'{g:.2f}' for g in growth_monai)} MB/round",
            kind="value",
            value=value,
            unit="MB/round",
            goal="<= 1.0 MB/round",
            met=value is not None and value <= 1.0,
            samples=[round(g, 3) for g in growth],
            detail={
                "monai_growth_mb_per_round": [round(g, 3) for g in growth_monai],
                "clara_rss_after_round_mb": {
                    s: m["rss_after_round_mb"] for s, m in pairs[0]["clara-fl"]["memory"].items()
                },
                "clara_threads_after_round": {
                    s: m["threads_after_round"] for s, m in pairs[0]["clara-fl"]["memory"].items()
                },
                "monai_threads_after_round": {
                    s: m["threads_after_round"] for s, m in pairs[0]["monai"]["memory"].items()
                },
                "monai_rss_after_round_mb": {
                    s: m["rss_after_round_mb"] for s, m in pairs[0]["monai"]["memory"].items()
                },
            },
        ),
    ]


def evaluate_weights(settings: Settings, data: Path, weights: Path, out: Path, datalist: Path | None = None) -> float:
    """val_mean_dice of saved weights on a datalist's validation set (default the union, ``dataset.json``), by one
    neutral evaluator (the hand-written one)."""
    roi = [str(settings.roi)] * 3
    command = [
        PY,
        str(BENCH / "handwritten_train.py"),
        "--data-root",
        str(data),
        "--datalist",
        str(datalist or data / "dataset.json"),
        "--out",
        str(out),
        "--roi",
        *roi,
        "--num-workers",
        "0",
        "--eval-weights",
        str(weights),
    ]
    proc = subprocess.run(command, env=base_env(settings.standalone_threads), capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("EVAL "):
            return float(json.loads(line[5:])["val_mean_dice"])
    raise RuntimeError(f"evaluating {weights} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def clara_train_command(
    mmar: Path,
    settings: Settings,
    epochs: int,
    valid_interval: int,
    data: Path,
    datalist: Path,
    extra_set: Sequence[str] = (),
) -> list[str]:
    """``clara-fl train`` of ``mmar`` on ``datalist`` under ``data`` with the bench's settings."""
    return [
        PY,
        "-m",
        "clara_fl",
        "train",
        "-m",
        str(mmar),
        "--set",
        *mmar_settings(settings, epochs, valid_interval),
        *extra_set,
        f"DATA_ROOT={data}",
        f"DATASET_JSON={datalist}",
    ]


def train_clara(
    settings: Settings, data: Path, datalist: Path, out: Path, epochs: int, extra_set: Sequence[str] = ()
) -> tuple[Run, Path]:
    """``clara-fl train`` on ``datalist`` for ``epochs`` (no validation), returning the run and its final model."""
    mmar = copy_mmar(out / "mmar")
    command = clara_train_command(mmar, settings, epochs, 1000, data, datalist, extra_set)
    run = check(
        run_process(
            f"clara-fl train on {datalist.name}",
            command,
            base_env(settings.standalone_threads),
            out / "output.log",
            timeout_s=settings.timeout_s,
        )
    )
    return run, mmar / "models" / "final_model.pt"


def quality_pair(settings: Settings, data: Path, out: Path, seed: int) -> dict[str, float]:
    """FedAvg (clara-fl, simulator) and centralized ``clara-fl train`` on the union data, same epochs and seed;
    both final models measured by one neutral evaluator on the union validation set."""
    rounds, local = settings.quality_rounds, settings.quality_local_epochs
    seed_set = [f"determinism.random_seed={seed}"]
    fl_run, workspace = run_clara_fl(
        settings, data, out / "fedavg", rounds, 1000, local_epochs=local, extra_set=seed_set
    )
    central_run, central_weights = train_clara(
        settings, data, data / "dataset.json", out / "central", rounds * local, seed_set
    )
    return {
        "seed": seed,
        "fedavg": evaluate_weights(
            settings, data, workspace / "server" / "simulate_job" / "app_server" / "FL_global_model.pt", out / "eval"
        ),
        "central": evaluate_weights(settings, data, central_weights, out / "eval"),
        "fedavg_wall_s": round(fl_run.wall_s, 1),
        "central_wall_s": round(central_run.wall_s, 1),
    }


def figure_quality(settings: Settings, data: Path, work: Path, log: Callable[[str], None]) -> Record:
    """Median over seeds of FedAvg's final val_mean_dice / centralized training's, each pair with one seed."""
    rounds, local = settings.quality_rounds, settings.quality_local_epochs
    epochs = rounds * local
    pairs = []
    for seed in settings.quality_seeds:
        pair = quality_pair(settings, data, work / "quality" / f"seed-{seed}", seed)
        log(
            f"  seed {seed}: FedAvg {rounds} rounds x {local} epochs: val_mean_dice {pair['fedavg']:.4f}; centralized {epochs} epochs: {pair['central']:.4f}"
        )
        pairs.append(pair)
    ratios = [p["fedavg"] / p["central"] for p in pairs if p["central"] > 0]
    value = median(ratios)
    return Record(
        figure="6 FL quality",
        measure=f"final val_mean_dice, FedAvg 2 sites ({rounds} rounds x {local} epochs) / centralized ({epochs} epochs), union val set",
        baseline=f"clara-fl train on the union of the sites' data, same seed (seeds {', '.join(map(str, settings.quality_seeds))})",
        kind="ratio",
        value=value,
        unit="x",
        goal=">= 0.97",
        met=value is not None and value >= 0.97,
        samples=[round(r, 4) for r in ratios],
        detail={
            "pairs": pairs,
            "evaluator": "bench/handwritten_train.py --eval-weights (the same network, transforms and metric for both)",
        },
    )


def figure_gpu() -> Record:
    probe = subprocess.run(
        [PY, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True, text=True, env=base_env(1)
    )
    has_gpu = probe.stdout.strip() == "True"
    note = (
        "skipped: no GPU lent"
        if not has_gpu
        else "skipped: GPU present, throughput figure not implemented in this suite"
    )
    return Record(
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


# -- figures 8-9: FL algorithms on identical and differing sites, homomorphic encryption -----------------

ALGORITHMS = ("fedavg", "fedprox", "fedopt", "scaffold", "ditto", "fedbn")
#: ``--algorithm-arg K=V`` per algorithm for figure 8 (none given: the CLI's defaults)
ALGORITHM_ARGS: dict[str, tuple[str, ...]] = {}
SITES = ("site-1", "site-2")
HETEROGENEITY = {"identical": "none", "differing": "strong"}  # figure 8's two datasets (clara-fl synth levels)


@dataclasses.dataclass
class Arm:
    """One way of training in figure 8 and its Dice on each site's validation data."""

    name: str
    per_site: dict[str, float] = dataclasses.field(default_factory=dict)
    skipped: str = ""  # why it did not run ("skipped: ...")
    note: str = ""
    wall_s: float | None = None
    # FedAvg's global model also scored by the neutral evaluator that scores centralized and site-alone training
    neutral_per_site: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.per_site.values()) if self.per_site else None

    @property
    def worst(self) -> float | None:
        return min(self.per_site.values()) if self.per_site else None

    def shown(self) -> str:
        if self.skipped:
            return self.skipped
        if self.mean is None or self.worst is None:
            return "-"
        return f"{self.mean:.3f}/{self.worst:.3f}"


def algorithm_options(name: str) -> list[str]:
    """The ``job create`` options that select ``name`` and its figure-8 arguments."""
    return ["--algorithm", name, *[a for kv in ALGORITHM_ARGS.get(name, ()) for a in ("--algorithm-arg", kv)]]


def cross_site_dice(workspace: Path, personalized: bool = False) -> dict[str, float]:
    """Each site's val_mean_dice from the run's cross-site table: the global model's, or (``personalized``) the
    site's own model on its own data (Ditto)."""
    from clara_fl.fl.jobs.results import find_cross_site_results, load_cross_site_results

    found = find_cross_site_results(workspace)
    if found is None:
        raise RuntimeError(f"no cross_val_results.json under {workspace}")
    results = load_cross_site_results(found)
    dice = {}
    for site, row in results.items():
        if personalized:
            owner = site
        else:
            # the final global model (not the best-by-validation one), as the centralized arm's final_model.pt
            final = [o for o in ("SRV_FL_global_model.pt", "FL_global_model.pt") if o in row]
            owners = final or [o for o in row if (o.startswith("SRV_") or o.endswith(".pt")) and "best" not in o]
            owner = owners[0] if owners else ""
        value = row.get(owner, {}).get("val_mean_dice") if isinstance(row.get(owner), dict) else None
        if isinstance(value, (int, float)):
            dice[site] = float(value)
    return dice


def run_algorithm(settings: Settings, data: Path, out: Path, name: str) -> Arm:
    """One algorithm's job on 2 sites, scored from its cross-site table; skipped when job create refuses it."""
    rounds, local = settings.algorithm_rounds, settings.algorithm_local_epochs
    seed_set = [f"determinism.random_seed={settings.algorithm_seed}"]
    note = ""
    try:
        try:
            run, workspace = run_clara_fl(
                settings, data, out, rounds, 1000, local, seed_set, job_options=algorithm_options(name)
            )
        except JobRefused as refused:
            if name != "fedavg" or "--algorithm" not in str(refused):
                raise
            run, workspace = run_clara_fl(settings, data, out, rounds, 1000, local, seed_set)
            note = "job create has no --algorithm: its default job, FedAvg"
    except JobRefused as refused:
        return Arm(name, skipped=f"skipped: {refused}")
    except RuntimeError as failed:
        return Arm(name, skipped=f"failed: {str(failed).splitlines()[0]}")
    per_site = cross_site_dice(workspace, personalized=name == "ditto")
    neutral = {}
    if name == "fedavg":  # the two evaluators should agree: the goals compare their figures
        weights = workspace / "server" / "simulate_job" / "app_server" / "FL_global_model.pt"
        neutral = {
            site: evaluate_weights(settings, data, weights, out / "eval", data / f"dataset_{site}.json")
            for site in SITES
        }
    return Arm(name, per_site, note=note, wall_s=round(run.wall_s, 1), neutral_per_site=neutral)


def run_alone_and_central(settings: Settings, data: Path, out: Path) -> list[Arm]:
    """Centralized training on the union and each site alone, same epochs as the FL runs, scored on every site."""
    epochs = settings.algorithm_rounds * settings.algorithm_local_epochs
    seed_set = [f"determinism.random_seed={settings.algorithm_seed}"]
    trainings = {"centralized": data / "dataset.json"} | {f"{s} alone": data / f"dataset_{s}.json" for s in SITES}
    arms = []
    for name, datalist in trainings.items():
        folder = out / name.replace(" ", "-")
        run, weights = train_clara(settings, data, datalist, folder, epochs, seed_set)
        per_site = {
            site: evaluate_weights(settings, data, weights, folder / "eval", data / f"dataset_{site}.json")
            for site in SITES
        }
        arms.append(Arm(name, per_site, wall_s=round(run.wall_s, 1)))
    return arms


def run_quality_on_sites(settings: Settings, work: Path, log: Callable[[str], None]) -> dict[str, list[Arm]]:
    """Every arm of figure 8 on the identical and on the differing sites' data."""
    arms: dict[str, list[Arm]] = {}
    for label, level in HETEROGENEITY.items():
        data = prepare_data(settings, level)
        out = work / "algorithms" / label
        arms[label] = run_alone_and_central(settings, data, out)
        arms[label] += [run_algorithm(settings, data, out / name, name) for name in ALGORITHMS]
        log(f"  {label} sites (--heterogeneity {level}): " + ", ".join(f"{a.name} {a.shown()}" for a in arms[label]))
    return arms


def figure_algorithms(arms: dict[str, list[Arm]], settings: Settings) -> list[Record]:
    """One row per arm (mean/worst-site Dice on identical | differing sites) and the three goals."""
    budget = f"{settings.algorithm_rounds} rounds x {settings.algorithm_local_epochs} epochs"
    by_name = {label: {a.name: a for a in group} for label, group in arms.items()}
    records = []
    for name in by_name["identical"]:
        pair = [by_name[label][name] for label in HETEROGENEITY]
        records.append(
            Record(
                figure=f"8 quality: {name}",
                measure=f"mean/worst-site Dice on each site's validation data, {budget} (or the same epochs)",
                baseline="identical | differing sites (mean/worst)",
                kind="dice",
                value=_round(pair[1].mean),
                unit="",
                goal="(reported)",
                met=None,
                note=" | ".join(a.shown() for a in pair),
                detail={label: dataclasses.asdict(a) for label, a in zip(HETEROGENEITY, pair, strict=True)},
            )
        )
    same = by_name["identical"]
    fedavg, central = same["fedavg"].mean, same["centralized"].mean
    ratio = fedavg / central if fedavg is not None and central else None
    records.append(
        Record(
            figure="8 identical sites: FedAvg",
            measure="mean Dice over the sites, FedAvg / centralized, same epochs",
            baseline="clara-fl train on the union of the sites' data",
            kind="ratio",
            value=ratio,
            unit="x",
            goal=">= 0.97",
            met=ratio is not None and ratio >= 0.97,
        )
    )
    differ = by_name["differing"]
    federated = [differ[n] for n in ALGORITHMS if differ[n].mean is not None]
    best = max(federated, key=lambda a: a.mean or 0.0) if federated else None
    others = [a for a in federated if a.name != "fedavg"]
    base = differ["fedavg"].mean
    if best is None or base is None or not others:
        ran = ", ".join(a.name for a in federated) or "none"
        reason = f"skipped: only {ran} ran; the goal compares other algorithms with FedAvg"
        beats_fedavg = Record(
            "8 differing sites: best vs FedAvg",
            "best algorithm's mean Dice / FedAvg's",
            "FedAvg",
            "skipped",
            None,
            "",
            "> 1.00",
            None,
            note=reason,
        )
    else:
        beats_fedavg = Record(
            figure="8 differing sites: best vs FedAvg",
            measure="mean Dice over the sites, best algorithm / FedAvg",
            baseline=f"FedAvg (best: {best.name})",
            kind="ratio",
            value=(best.mean or 0.0) / base,
            unit="x",
            goal="> 1.00",
            met=best.name != "fedavg" and (best.mean or 0.0) > base,
        )
    records.append(beats_fedavg)
    if best is None:
        margins: dict[str, float] = {}
    else:
        margins = {
            s: best.per_site[s] - differ[f"{s} alone"].per_site[s]
            for s in SITES
            if s in best.per_site and s in differ[f"{s} alone"].per_site
        }
    records.append(
        Record(
            figure="8 differing sites: best vs each site alone",
            measure="per site: best algorithm's Dice minus that site's own model's, on the site's validation data",
            baseline=f"each site trained alone ({best.name if best else 'no algorithm ran'}; smallest margin)",
            kind="delta",
            value=min(margins.values()) if len(margins) == len(SITES) else None,
            unit="",
            goal="> 0 at every site",
            met=len(margins) == len(SITES) and min(margins.values()) > 0,
            samples=[round(m, 4) for m in margins.values()],
            note="" if best else "skipped: no algorithm ran",
        )
    )
    return records


def round_durations(server_log: Path) -> list[float]:
    """Seconds from each round's start to the next one's, round 0 left out (it also starts the sites) when
    there are later rounds."""
    starts = round_starts(server_log)
    gaps = [starts[r + 1] - starts[r] for r in sorted(starts) if r + 1 in starts]
    return gaps[1:] or gaps


def bytes_sent_per_round(probe: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per site: median of the bytes its sockets sent between the ends of consecutive local trainings."""
    sent: dict[str, float | None] = {}
    for site in sorted({r["site"] for r in probe if r["site"] != "?"}):
        trains = sorted(
            (r for r in probe if r["site"] == site and r.get("kind") == "wrapper" and r.get("method") == "train"),
            key=lambda r: r["end"],
        )
        counts = [r["bytes_sent"] for r in trains if "bytes_sent" in r]
        sent[site] = median([b - a for a, b in zip(counts, counts[1:], strict=False)])
    return sent


def run_he_pair(settings: Settings, data: Path, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The same FedAvg job without and with ``--he`` (order alternates with ``algorithm_seed``)."""
    sides = {"plain": [], "he": ["--he"]}
    result: dict[str, Any] = {}
    for name in sorted(sides, reverse=settings.algorithm_seed % 2 == 1):
        out = work / "he" / name
        run, workspace = run_clara_fl(settings, data, out, settings.he_rounds, 1000, job_options=sides[name])
        rounds = round_durations(workspace / "server" / "log.txt")
        per_site = bytes_sent_per_round(read_probe(out / "probe"))
        known = [b for b in per_site.values() if b is not None]
        result[name] = {
            "round_s": [round(r, 3) for r in rounds],
            "median_round_s": median(rounds),
            "bytes_sent_per_round": per_site,
            "max_site_bytes_sent_per_round": max(known) if known else None,
            "process_wall_s": round(run.wall_s, 1),
        }
    log(
        "  "
        + ", ".join(
            f"{n}: round {r['median_round_s'] or float('nan'):.2f} s, "
            f"{(r['max_site_bytes_sent_per_round'] or float('nan')) / 1e6:.1f} MB sent per round by a site"
            for n, r in result.items()
        )
    )
    return result


def figure_he(settings: Settings, data: Path, work: Path, log: Callable[[str], None]) -> list[Record]:
    """HE round time / plain round time (goal <= 2.0) and the bytes a site sends per round with and without."""
    try:
        pair = run_he_pair(settings, data, work, log)
    except JobRefused as refused:
        return [
            Record(
                "9 HE round time",
                "median round time, --he / without",
                "same job without --he",
                "skipped",
                None,
                "",
                "<= 2.00",
                None,
                note=f"skipped: {refused}",
            ),
        ]
    plain, he = pair["plain"], pair["he"]
    time_ratio = (
        he["median_round_s"] / plain["median_round_s"] if he["median_round_s"] and plain["median_round_s"] else None
    )
    sent_plain, sent_he = plain["max_site_bytes_sent_per_round"], he["max_site_bytes_sent_per_round"]
    mb = lambda b: "n/a" if b is None else f"{b / 1e6:.1f} MB"  # noqa: E731
    return [
        Record(
            figure="9 HE round time",
            measure=f"median round time (rounds 1..{settings.he_rounds - 2}), FedAvg with --he / without, 2 sites",
            baseline="the same job without --he",
            kind="ratio",
            value=time_ratio,
            unit="x",
            goal="<= 2.00",
            met=time_ratio is not None and time_ratio <= 2.0,
            samples=[he["median_round_s"], plain["median_round_s"]],
            detail=pair,
        ),
        Record(
            figure="9 HE bytes sent",
            measure="bytes a site's sockets send per round (the larger site), --he / without",
            baseline=f"without --he: {mb(sent_plain)}, with: {mb(sent_he)} per round",
            kind="ratio",
            value=sent_he / sent_plain if sent_he and sent_plain else None,
            unit="x",
            goal="(reported)",
            met=None,
            note="" if sent_he and sent_plain else "no socket bytes counted (bench/probe)",
            detail={"plain": plain["bytes_sent_per_round"], "he": he["bytes_sent_per_round"]},
        ),
    ]


# -- report ----------------------------------------------------------------------------------------


def table(records: list[Record]) -> str:
    rows = [("figure", "clara-fl vs baseline", "value", "goal", "met")]
    for r in records:
        met = "n/a" if r.met is None else ("yes" if r.met else "NO")
        rows.append((r.figure, r.baseline, r.shown_value(), r.goal, met))
    widths = [min(max(len(row[i]) for row in rows), 60 if i == 1 else 200) for i in range(5)]

    def fmt(row: Sequence[str]) -> str:
        cells = [(c if len(c) <= widths[i] else c[: widths[i] - 1] + "…").ljust(widths[i]) for i, c in enumerate(row)]
        return "  ".join(cells).rstrip()

    lines = [fmt(rows[0]), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows[1:]]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "gpu": "none lent",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, one pair of each (the smoke test's mode)")
    parser.add_argument(
        "--figures", default="1,2,3,4,5,6,7,8,9", help="comma-separated figure numbers to run (default: all)"
    )
    parser.add_argument("--pairs", type=int, help="standalone A/B pairs (default 5, quick 1)")
    parser.add_argument("--fl-pairs", type=int, help="FL A/B pairs (default 3, quick 1)")
    parser.add_argument("--rounds", type=int, help="FL rounds (default 20, quick 4)")
    parser.add_argument(
        "--algorithm-rounds",
        type=int,
        help="figure 8: rounds (x local epochs = every arm's epochs; default 10, quick 2)",
    )
    parser.add_argument(
        "--algorithm-local-epochs", type=int, help="figure 8: local epochs per round (default 3, quick 1)"
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
    args = parser.parse_args(argv)

    settings = QUICK if args.quick else Settings()
    changes = {
        k: v
        for k, v in {
            "pairs": args.pairs,
            "fl_pairs": args.fl_pairs,
            "rounds": args.rounds,
            "algorithm_rounds": args.algorithm_rounds,
            "algorithm_local_epochs": args.algorithm_local_epochs,
        }.items()
        if v is not None
    }
    settings = dataclasses.replace(settings, **changes)
    least_rounds = max(settings.warmup_rounds, settings.memory_warmup_rounds) + 2
    if settings.pairs < 1 or settings.fl_pairs < 1 or settings.rounds < least_rounds:
        parser.error(f"need at least 1 pair and {least_rounds} rounds")
    wanted = {f.strip() for f in args.figures.split(",") if f.strip()}
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.time()
    load_before = os.getloadavg()
    log(f"clara-fl benchmarks ({settings.mode}): {dataclasses.asdict(settings)}")
    data = prepare_data(settings)
    records: list[Record] = []
    if wanted & {"1", "2", "3"}:
        log(
            f"figures 1-3: clara-fl train / hand-written / MONAI bundle, {settings.pairs} rotations, {settings.epochs} epochs"
        )
        pairs = run_standalone(settings, data, work, log)
        if "1" in wanted:
            records.append(figure_standalone(pairs))
            records.append(figure_standalone_cpu(pairs))
        if "2" in wanted:
            records.append(figure_startup(pairs))
            records.append(figure_imports(work, repeats=1 if args.quick else 3))
        if "3" in wanted:
            records.append(figure_bundle(pairs))
    if wanted & {"4", "5"}:
        log(
            f"figures 4-5: FedAvg, 2 sites, {settings.rounds} rounds: clara-fl vs MONAI path, {settings.fl_pairs} pairs"
        )
        fl_pairs = run_fl(settings, data, work, log)
        if "4" in wanted:
            records += figure_fl_overhead(fl_pairs, settings)
        if "5" in wanted:
            records += figure_memory(fl_pairs, settings)
    if "6" in wanted:
        log(
            f"figure 6: FedAvg {settings.quality_rounds} x {settings.quality_local_epochs} epochs vs centralized training on the union"
        )
        records.append(figure_quality(settings, data, work, log))
    if "7" in wanted:
        records.append(figure_gpu())
    if "8" in wanted:
        log(
            f"figure 8: centralized, each site alone and {', '.join(ALGORITHMS)} on identical and differing sites, "
            f"{settings.algorithm_rounds} rounds x {settings.algorithm_local_epochs} epochs"
        )
        records += figure_algorithms(run_quality_on_sites(settings, work, log), settings)
    if "9" in wanted:
        log(f"figure 9: FedAvg with --he and without, {settings.he_rounds} rounds")
        records += figure_he(settings, data, work, log)

    elapsed = time.time() - started
    print()
    print(table(records))
    print(
        f"\n{sum(r.met is True for r in records)} of {sum(r.met is not None for r in records)} goals met; {elapsed / 60:.1f} min"
    )
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(PY).name, "bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "mode": settings.mode,
        "settings": dataclasses.asdict(settings),
        "machine": machine(),
        "elapsed_s": round(elapsed, 1),
        "load_average_1_5_15": {
            "start": [round(v, 2) for v in load_before],
            "end": [round(v, 2) for v in os.getloadavg()],
        },
        "records": [dataclasses.asdict(r) for r in records],
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"results: {output}")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
