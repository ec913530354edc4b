"""One FL round of a site's training in N DDP processes (``torchrun -m clara_fl.fl.site_worker``).

The site's Learner launches it when ``nproc_per_site`` > 1: every rank builds the same
TrainWorkflow as ``clara-fl train`` under torchrun, loads the global weights and the site's
training state, trains the round, and rank 0 writes the new state (weights included) and the
summed step count for the Learner to send.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

__all__ = ["run_round", "main"]


def run_round(request: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist

    from clara_fl.config.mmar import load_config
    from clara_fl.config.restrictions import CodePolicy
    from clara_fl.workflows.engine_hooks import detach_checkpoint_loaders
    from clara_fl.fl.weights import load_global_weights
    from clara_fl.runtime.checkpoint import load_checkpoint, save_atomic
    from clara_fl.runtime.startup import build_once
    from clara_fl.workflows.train import TrainWorkflow

    overrides = {**request["overrides"], "multi_gpu": True}
    loaded = load_config(request["mmar_root"], request["train_config"], request["environment"], overrides, request["site_environment"])
    with build_once():  # one round per process
        policy = CodePolicy(request["code_policy"], tuple(request["data_roots"]))
        workflow = TrainWorkflow.build(loaded, code_policy=policy)
    detach_checkpoint_loaders(workflow.trainer, workflow.resolver.get("handlers", "train"))
    workflow.load_training_state(request["state_path"])
    load_global_weights(workflow.network, load_checkpoint(request["weights_path"]))

    trainer = workflow.trainer
    steps = torch.zeros(1, dtype=torch.long)

    def count(_: Any) -> None:
        steps.add_(1)
        if request["steps_aggregation"] and int(steps) >= request["steps_aggregation"]:
            trainer.terminate()

    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, count)
    epoch_length = trainer.state.epoch_length or len(trainer.data_loader)
    extra = -(-request["steps_aggregation"] // epoch_length) + 1 if request["steps_aggregation"] else request["local_epochs"]
    trainer.state.max_epochs = trainer.state.epoch + extra
    trainer.run()

    total = steps.clone()
    dist.all_reduce(total)  # the site's update stands for every rank's iterations
    if dist.get_rank() == 0:
        # the new weights travel in the state, which the Learner loads and adopts once the update is accepted
        workflow.save_training_state(request["new_state_path"])
        save_atomic({"steps": int(total)}, request["result_path"])


def main() -> None:
    from clara_fl.runtime.distributed import shutdown_distributed

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("request", help="JSON file written by the Learner")
    args = parser.parse_args()
    with open(args.request, encoding="utf-8") as f:
        request = json.load(f)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    succeeded = False
    try:
        run_round(request)
        succeeded = True
    finally:
        shutdown_distributed(wait_for_all=succeeded)


if __name__ == "__main__":
    main()
