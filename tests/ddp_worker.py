"""Run under torchrun by test_ddp.py: train the MMAR given on the command line and record, per rank,
what only the rank itself can see (its weights, its handlers, its iteration count)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from clara_fl.config.mmar import load_config
from clara_fl.config.variables import parse_set_args
from clara_fl.runtime.distributed import shutdown_distributed
from clara_fl.workflows.train import TrainWorkflow


def main(mmar: str, out: str, *settings: str) -> None:
    workflow = TrainWorkflow.build(load_config(mmar, "config/config_train.json", overrides=parse_set_args(settings)))
    stats = workflow.run(write_stats=True, progress=False)
    rank = workflow.context.rank
    torch.save(workflow.network.state_dict(), Path(out) / f"rank{rank}.pt")
    handlers = [type(h).__name__ for h in workflow.resolver.get("handlers", "train")]
    facts = {"iterations": stats.total_iterations, "world_size": stats.world_size, "handlers": handlers}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(facts))
    shutdown_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
