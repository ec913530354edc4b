#!/usr/bin/env python
"""``make gpu-check``: every CUDA path of clara-fl in one prepared run, figures in one file.

    .venv/bin/python bench/gpu_check.py [--out bench/results/gpu_check.json] [--budget-s 480]

Steps (each a child process with its own time limit, run in this order so a failure still leaves
the others' figures):

1. ``train-amp``   ``clara-fl train`` on the GPU with AMP (GradScaler), TF32 and cuDNN benchmark on;
                   iterations/s from train_stats.json; the log must not say AMP was switched off.
2. ``baseline``    the same training written by hand (bench/handwritten_train.py) on the same GPU:
                   figure 7 is clara-fl's iterations/s over the hand-written script's.
3. ``validate``    ``clara-fl validate`` of the trained checkpoint on the GPU with AMP.
4. ``ddp-nccl``    ``torchrun --nproc_per_node=N -m clara_fl train --set multi_gpu=True`` over the GPUs
                   present (N = min(2, GPUs); one GPU still runs one NCCL rank).
5. ``fl-round``    a 1-round, 2-site FedAvg in FLARE's simulator with both sites on the GPU, cross-site table.

Without a CUDA device nothing is run and the file says so (exit code 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run by path (``make gpu-check``): the ``bench`` package sits in the checkout
    sys.path.insert(0, str(ROOT))

from bench.harness.data import write_site_config  # noqa: E402
from bench.harness.federated import job_create_command, simulate_command  # noqa: E402
from bench.harness.settings import MMAR, PY  # noqa: E402

SETTINGS: dict[str, Any] = {
    "roi_size": [48, 48, 48],
    "num_workers": 2,
    "num_interval_per_valid": 1,
    "learning_rate": 0.001,
}


def gpu_facts() -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return {
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "count": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None,
    }


def sets(**values: Any) -> list[str]:
    return [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in values.items()]


def run(name: str, command: list[str], log: Path, timeout_s: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    with open(log, "w") as out:
        try:
            code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, env=env, cwd=ROOT)
        except subprocess.TimeoutExpired:
            code = -1
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    print(f"  {name}: exit {code} in {wall:.1f} s ({log})", flush=True)
    return {"exit_code": code, "wall_s": round(wall, 2), "log": str(log), "tail": text[-1500:] if code else ""}


def copy_mmar(destination: Path, data: Path) -> Path:
    shutil.copytree(MMAR, destination, ignore=shutil.ignore_patterns("models", "eval"))
    env_file = destination / "config" / "environment.json"
    env = json.loads(env_file.read_text())
    env.update(DATA_ROOT=str(data), DATASET_JSON=str(data / "dataset.json"))
    env_file.write_text(json.dumps(env, indent=2))
    return destination


def iterations_per_s(stats_file: Path) -> float | None:
    if not stats_file.is_file():
        return None
    stats = json.loads(stats_file.read_text())
    return round(stats["total_iterations"] / stats["total_time_s"], 2) if stats.get("total_time_s") else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check.json"))
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    facts = gpu_facts()
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "gpu": facts, "steps": {}}
    if facts is None:
        result["note"] = "no CUDA device: nothing checked"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"gpu-check: no CUDA device here, nothing checked ({out})")
        return 0

    from clara_fl.data.synthetic import make_synthetic_dataset

    work = Path(tempfile.mkdtemp(prefix="clara_fl_gpu_check_"))
    data = make_synthetic_dataset(work / "data", cases=16, sites=2, shape=(96, 96, 64), seed=0).root
    mmar = copy_mmar(work / "spleen", data)
    steps = result["steps"]
    train_values = sets(**SETTINGS, epochs=args.epochs, amp=True, tf32=True, cudnn_benchmark=True, use_gpu=True)

    print("gpu-check: 1/5 train with AMP, TF32, cuDNN benchmark", flush=True)
    step = run(
        "train-amp",
        [PY, "-m", "clara_fl", "train", "-m", str(mmar), "--write_train_stats", "--set", *train_values],
        work / "train.log",
        180,
    )
    step["iterations_per_s"] = iterations_per_s(mmar / "models" / "train_stats.json")
    step["amp_switched_off"] = "running without AMP" in (work / "train.log").read_text(errors="replace")
    steps["train-amp"] = step

    print("gpu-check: 2/5 hand-written baseline on the same GPU", flush=True)
    roi = [str(v) for v in SETTINGS["roi_size"]]
    baseline = run(
        "baseline",
        [
            PY,
            str(ROOT / "bench" / "handwritten_train.py"),
            "--data-root",
            str(data),
            "--datalist",
            str(data / "dataset.json"),
            "--out",
            str(work / "handwritten"),
            "--epochs",
            str(args.epochs),
            "--roi",
            *roi,
            "--num-workers",
            "2",
        ],
        work / "baseline.log",
        180,
    )
    steps["baseline"] = baseline
    result["figure_7"] = {
        "measure": "clara-fl train wall time / hand-written wall time, same GPU, same epochs (lower is better)",
        "value": round(step["wall_s"] / baseline["wall_s"], 3)
        if not step["exit_code"] and not baseline["exit_code"]
        else None,
        "clara_fl_iterations_per_s": step["iterations_per_s"],
    }

    print("gpu-check: 3/5 validate on the GPU with AMP", flush=True)
    steps["validate"] = run(
        "validate",
        [
            PY,
            "-m",
            "clara_fl",
            "validate",
            "-m",
            str(mmar),
            "--set",
            *sets(
                roi_size=SETTINGS["roi_size"],
                dont_load_ts_model=True,
                dont_load_ckpt_model=False,
                amp=True,
                num_workers=2,
            ),
        ],
        work / "validate.log",
        90,
    )

    print("gpu-check: 4/5 DDP over NCCL", flush=True)
    nproc = min(2, facts["count"])
    ddp = copy_mmar(work / "spleen_ddp", data)
    steps["ddp-nccl"] = run(
        "ddp-nccl",
        [
            PY,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "-m",
            "clara_fl",
            "train",
            "-m",
            str(ddp),
            "--write_train_stats",
            "--set",
            *sets(**SETTINGS, epochs=2, amp=True, multi_gpu=True),
        ],
        work / "ddp.log",
        150,
    )
    steps["ddp-nccl"]["processes"] = nproc
    steps["ddp-nccl"]["nccl_in_log"] = "nccl" in (work / "ddp.log").read_text(errors="replace").lower()

    print("gpu-check: 5/5 one FL round on the GPU", flush=True)
    job, site_file = work / "job", write_site_config(work / "site.json", data)
    created = run("job-create", job_create_command(MMAR, job, 1, 1, sets(**SETTINGS, amp=True)), work / "job.log", 60)
    if created["exit_code"] == 0:
        steps["fl-round"] = run("fl-round", simulate_command(job, work / "ws", site_file), work / "fl.log", 180)
    else:
        steps["fl-round"] = created

    result["passed"] = all(s["exit_code"] == 0 for s in steps.values()) and not step["amp_switched_off"]
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=2))
    print(f"gpu-check: {'passed' if result['passed'] else 'FAILED'}; figures in {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
