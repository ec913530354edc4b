"""Distributed set-up for ``torchrun``/``torch.distributed.launch`` with ``multi_gpu: true``.

NCCL with one GPU per local rank on CUDA, gloo on the CPU. Only the trainer's forward goes
through DistributedDataParallel; evaluators use the bare network, so ranks with different numbers
of validation cases never wait on each other inside a forward pass (metrics are gathered instead).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from clara_fl.config.errors import ConfigError

__all__ = [
    "launched_world_size",
    "init_distributed",
    "shutdown_distributed",
    "wrap_for_training",
    "sync_buffers_every_epoch",
    "unwrap",
    "is_main_process",
]

logger = logging.getLogger(__name__)


def launched_world_size() -> int:
    """Processes started by the launcher (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(multi_gpu: bool, device: Any) -> int:
    """Join the process group the launcher set up; returns the world size this process trains in."""
    import torch.distributed as dist

    world_size = launched_world_size()
    if world_size == 1:
        return 1
    if not multi_gpu:
        raise ConfigError(
            f"launched as {world_size} processes but multi_gpu is false: every process would train alone and "
            "write the same files; add --set multi_gpu=True",
            path="multi_gpu",
        )
    if not dist.is_initialized():
        backend = "nccl" if getattr(device, "type", "cpu") == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("rank %d of %d joined the %s process group", dist.get_rank(), world_size, backend)
    return world_size


def shutdown_distributed(wait_for_all: bool = True) -> None:
    """Leave the process group so every rank exits cleanly (no hang, no abort at exit).

    After a failure, do not wait for the other ranks: they may be blocked in a collective.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


def wrap_for_training(network: Any, device: Any) -> Any:
    """DistributedDataParallel around ``network`` when a process group is up, else the network itself."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not (dist.is_available() and dist.is_initialized()):
        return network
    device_ids = [device.index] if getattr(device, "type", "cpu") == "cuda" else None
    return DistributedDataParallel(network, device_ids=device_ids)


def sync_buffers_every_epoch(trainer: Any, network: Any) -> None:
    """Broadcast rank 0's buffers (BatchNorm statistics) at the end of each epoch's last iteration.

    DDP keeps parameters equal but each rank updates its running statistics after the last forward;
    syncing before EPOCH_COMPLETED means validation and checkpoints see one identical model on all ranks.
    """
    import torch.distributed as dist
    from ignite.engine import Events

    def last_iteration(engine: Any, iteration: int) -> bool:
        return bool(engine.state.epoch_length) and iteration % engine.state.epoch_length == 0

    @trainer.on(Events.ITERATION_COMPLETED(event_filter=last_iteration))
    def broadcast_buffers(_: Any) -> None:
        for buffer in network.buffers():
            dist.broadcast(buffer, src=0)


def unwrap(network: Any) -> Any:
    """The network inside a DistributedDataParallel/DataParallel wrapper."""
    return getattr(network, "module", network)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
