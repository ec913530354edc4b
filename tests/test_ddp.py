"""Multi-process training and validation with DistributedDataParallel (gloo on the CPU).

Same runtime core as single-process runs: torchrun only adds a process group, a sampler per
data loader and DDP around the trainer's network.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clara_fl.cli import main
from tests.conftest import tiny_set

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        *args,
    ]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)


def single_process_iterations(mmar: Path) -> int:
    assert main(["train", "-m", str(mmar), "--write_train_stats", "--set", *tiny_set(epochs=2)]) == 0
    return json.loads((mmar / "models" / "train_stats.json").read_text())["total_iterations"]


def test_two_rank_training_splits_the_data_syncs_the_weights_and_writes_once(spleen_mmar: Path, tmp_path: Path) -> None:
    done = torchrun(
        str(REPO / "tests" / "ddp_worker.py"), str(spleen_mmar), str(tmp_path), "multi_gpu=True", *tiny_set(epochs=2)
    )
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # every rank ends with the same weights
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # "rank": 0 handlers are kept on rank 0 only (built everywhere, so nothing deadlocks)
    assert {"CheckpointSaver", "StatsHandler", "TensorBoardStatsHandler"} <= set(ranks[0]["handlers"])
    assert not {"CheckpointSaver", "StatsHandler", "TensorBoardStatsHandler"} & set(ranks[1]["handlers"])
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    # one set of outputs, from rank 0, loadable without a DDP "module." prefix
    models = spleen_mmar / "models"
    checkpoint = torch.load(models / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in checkpoint["model"])
    assert (
        all(torch.equal(checkpoint["model"][k], weights[0][k]) for k in checkpoint["model"])
        or (models / "final_model.pt").is_file()
    )
    assert len({p.name.split(".")[-2] for p in models.glob("events.out.tfevents.*")}) == 1  # one writer process
    stats = json.loads((models / "train_stats.json").read_text())
    assert stats["world_size"] == 2 and stats["total_iterations"] == ranks[0]["iterations"]

    # each rank ran about half of what one process runs
    single = tmp_path / "single"
    import shutil

    shutil.copytree(spleen_mmar, single, ignore=shutil.ignore_patterns("models", "eval"))
    assert ranks[0]["iterations"] < single_process_iterations(single)


def test_torchrun_cli_train_then_validate_gives_the_single_process_metrics(spleen_mmar: Path, capsys) -> None:
    mmar = str(spleen_mmar)
    trained = torchrun("-m", "clara_fl", "train", "-m", mmar, "--set", "multi_gpu=True", *tiny_set())
    assert trained.returncode == 0, trained.stderr[-3000:]

    from_ckpt = ["dont_load_ts_model=True", "dont_load_ckpt_model=False"]
    validated = torchrun("-m", "clara_fl", "validate", "-m", mmar, "--set", "multi_gpu=True", *tiny_set(), *from_ckpt)
    assert validated.returncode == 0, validated.stderr[-3000:]
    distributed = [line for line in validated.stdout.splitlines() if line.startswith("val_mean_dice:")]
    assert len(distributed) == 1  # printed by rank 0 only

    capsys.readouterr()
    assert main(["validate", "-m", mmar, "--set", *tiny_set(), *from_ckpt]) == 0
    single = [line for line in capsys.readouterr().out.splitlines() if line.startswith("val_mean_dice:")]
    assert distributed == single


def test_torchrun_without_multi_gpu_is_refused_before_anything_runs(spleen_mmar: Path) -> None:
    done = torchrun("-m", "clara_fl", "train", "-m", str(spleen_mmar), "--set", *tiny_set())

    assert done.returncode != 0
    assert "multi_gpu: launched as 2 processes but multi_gpu is false" in done.stderr
    assert not (spleen_mmar / "models").exists()


def test_the_clara_era_launcher_form_works(spleen_mmar: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.launch",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "clara_fl",
    ]
    done = subprocess.run(
        [*command, "train", "-m", str(spleen_mmar), "--set", "multi_gpu=True", *tiny_set()],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (spleen_mmar / "models" / "final_model.pt").is_file()


@pytest.mark.parametrize("seed", [0])
def test_same_seed_same_data_gives_identical_weights(spleen_mmar: Path, tmp_path: Path, seed: int) -> None:
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(spleen_mmar, twin)
    for mmar in (spleen_mmar, twin):
        assert main(["train", "-m", str(mmar), "--set", *tiny_set(epochs=2), f"determinism.random_seed={seed}"]) == 0

    first = torch.load(spleen_mmar / "models" / "final_model.pt", weights_only=True)["model"]
    second = torch.load(twin / "models" / "final_model.pt", weights_only=True)["model"]
    assert all(torch.equal(first[k], second[k]) for k in first)
