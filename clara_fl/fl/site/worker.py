"""One FL round of a site's training in N DDP processes (``torchrun -m clara_fl.fl.site.worker``).

The site's Learner launches it when ``nproc_per_site`` > 1 through :func:`train_in_processes`
and hands it a :class:`RoundRequest` (a JSON file): every rank builds the same TrainWorkflow as
``clara-fl train`` under torchrun, loads the site's training state and the global weights, trains
the round through the same :class:`~clara_fl.workflows.round.RoundRunner` as the in-process
Learner, and rank 0 writes the new state (weights included) and the step count summed over ranks
for the Learner to send.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RoundRequest", "train_in_processes", "run_round", "die_with_parent", "main"]

PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class RoundRequest:
    """Everything a worker needs for one round; written by the Learner, read by every rank."""

    mmar_root: str
    train_config: str
    environment: str
    code_policy: str
    local_epochs: int
    steps_aggregation: int
    state_path: str  # the site's accepted state, loaded before the round
    new_state_path: str  # rank 0 writes the state after the round here
    weights_path: str = ""  # the global weights (set by train_in_processes)
    result_path: str = ""  # rank 0 writes {"steps": n} here (set by train_in_processes)
    overrides: dict[str, Any] = field(default_factory=dict)
    site_environment: dict[str, Any] = field(default_factory=dict)
    data_roots: list[str] = field(default_factory=list)  # the site's data folders (restricted policy)

    def write(self, path: str) -> None:
        from clara_fl.runtime.files import write_json_atomic

        write_json_atomic(path, dataclasses.asdict(self))

    @classmethod
    def read(cls, path: str) -> RoundRequest:
        with open(path, encoding="utf-8") as f:
            return cls(**json.load(f))


def train_in_processes(
    request: RoundRequest,
    global_weights: Mapping[str, Any],
    nproc: int,
    work_dir: str,
    should_abort: Callable[[], bool],
) -> int | None:
    """The Learner's side: run one round in ``nproc`` workers (``torchrun --standalone``) and wait for them.

    Returns the step count summed over ranks, or None when ``should_abort()`` turned true and the
    workers were stopped (``request.new_state_path`` is then not to be used).

    Raises:
        RuntimeError: the workers failed (their log is ``work_dir/workers.log``).
    """
    import signal
    import subprocess
    import sys

    import torch

    from clara_fl.runtime.checkpoint import load_checkpoint, save_atomic

    os.makedirs(work_dir, exist_ok=True)
    request = dataclasses.replace(
        request, weights_path=os.path.join(work_dir, "global.pt"), result_path=os.path.join(work_dir, "result.pt")
    )
    save_atomic({k: torch.as_tensor(v) for k, v in global_weights.items()}, request.weights_path)
    for stale in (request.result_path, request.new_state_path):
        if os.path.exists(stale):
            os.remove(stale)
    request_path = os.path.join(work_dir, "request.json")
    request.write(request_path)
    command = [sys.executable, "-m", "clara_fl.fl.site.torchrun", "--parent-pid", str(os.getpid())]
    command += ["--standalone", f"--nproc_per_node={nproc}"]
    command += ["-m", "clara_fl.fl.site.worker", request_path]
    log_path = os.path.join(work_dir, "workers.log")
    with open(log_path, "w") as log:
        # torchrun and its workers form one process group; torchrun (clara_fl.fl.site.torchrun) and each worker
        # (main below) ask the kernel themselves to end them with their parent
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            try:
                process.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if should_abort():
                    # nothing of an aborted round is kept: no need to let torchrun wind its workers down
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=30)
                    return None
    if process.returncode != 0:
        raise RuntimeError(f"the {nproc} training processes exited with code {process.returncode}; see {log_path}")
    return int(load_checkpoint(request.result_path)["steps"])


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere
    nothing): a site's job process killed by FLARE or by ``kill -9`` leaves no torchrun or worker running."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_round(request: RoundRequest) -> None:
    """Train one round on this rank; rank 0 writes the new state and the summed step count.

    Raises:
        ConfigError: the MMAR does not build.
        Exception: whatever training raised.
    """
    import torch
    import torch.distributed as dist

    from clara_fl.config.checkpoint_loaders import without_checkpoint_loaders
    from clara_fl.config.mmar import load_config
    from clara_fl.config.restrictions import CodePolicy
    from clara_fl.fl.site.weights import load_global_weights
    from clara_fl.runtime.checkpoint import load_checkpoint, save_atomic
    from clara_fl.runtime.startup import build_once
    from clara_fl.workflows.round import RoundRunner, RoundSpec
    from clara_fl.workflows.train import TrainWorkflow

    overrides = {**request.overrides, "multi_gpu": True}
    loaded = load_config(
        request.mmar_root, request.train_config, request.environment, overrides, request.site_environment
    )
    with build_once():  # one round per process
        loaded = dataclasses.replace(loaded, config=without_checkpoint_loaders(loaded.config, ("train", "validate"))[0])
        workflow = TrainWorkflow.build(loaded, code_policy=CodePolicy(request.code_policy, tuple(request.data_roots)))
    rounds = RoundRunner(workflow.trainer, workflow.evaluator)
    workflow.load_training_state(request.state_path)
    load_global_weights(workflow.network, load_checkpoint(request.weights_path))

    result = rounds.run(RoundSpec(local_epochs=request.local_epochs, steps=request.steps_aggregation))

    total = torch.tensor([result.steps], dtype=torch.long)
    dist.all_reduce(total)  # the site's update stands for every rank's iterations
    if dist.get_rank() == 0:
        # the new weights travel in the state, which the Learner loads and adopts once the update is accepted
        workflow.save_training_state(request.new_state_path)
        save_atomic({"steps": int(total)}, request.result_path)


def main() -> None:
    from clara_fl.runtime.distributed import shutdown_distributed
    from clara_fl.runtime.library_logs import quiet_library_exceptions

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("request", help="JSON file written by the Learner (a RoundRequest)")
    args = parser.parse_args()
    parent = os.getppid()
    die_with_parent()  # torchrun is the parent; it dies with the site's job process
    if os.getppid() != parent:  # the parent died before the line above
        raise SystemExit("the training launcher is gone")
    request = RoundRequest.read(args.request)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_library_exceptions(debug=False)
    succeeded = False
    try:
        run_round(request)
        succeeded = True
    finally:
        shutdown_distributed(wait_for_all=succeeded)


if __name__ == "__main__":
    main()
