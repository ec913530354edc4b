"""One place that decides device, AMP, TF32, cuDNN benchmark and determinism for a process.

Standalone commands and FL executors both call :func:`prepare_runtime`, so a config behaves the
same in either face.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from clara_fl.config.errors import ConfigError
from clara_fl.config.resolver import BuildContext
from clara_fl.config.variables import Variables, as_bool
from clara_fl.runtime.distributed import init_distributed

__all__ = ["RuntimeSettings", "prepare_runtime"]

logger = logging.getLogger(__name__)


def _flag(variables: Variables, name: str, default: bool | None) -> bool | None:
    value = variables.get(name, default)
    if value is None:
        return None
    flag = as_bool(value)
    if flag is None:
        raise ConfigError(f"'{name}' must be true or false, got {value!r}", file=variables.file, path=name)
    return flag


@dataclass(frozen=True)
class RuntimeSettings:
    """The Clara globals that act on the process rather than on a component."""

    use_gpu: bool = True
    amp: bool = False
    multi_gpu: bool = False
    cudnn_benchmark: bool | None = None
    tf32: bool | None = None
    random_seed: int | None = None

    @classmethod
    def from_variables(cls, variables: Variables) -> RuntimeSettings:
        seed = variables.get("determinism.random_seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(
                f"expected an integer seed, got {seed!r}", file=variables.file, path="determinism.random_seed"
            )
        return cls(
            use_gpu=bool(_flag(variables, "use_gpu", True)),
            amp=bool(_flag(variables, "amp", False)),
            multi_gpu=bool(_flag(variables, "multi_gpu", False)),
            cudnn_benchmark=_flag(variables, "cudnn_benchmark", None),
            tf32=_flag(variables, "tf32", None),
            random_seed=seed,
        )


def prepare_runtime(settings: RuntimeSettings, mmar_root: str | None = None) -> BuildContext:
    """Apply ``settings`` to torch and return the context components are built in.

    Seeding happens here, before any network is built, so weights initialise identically.
    """
    import torch

    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    rank = int(os.environ.get("RANK", "0"))
    if settings.use_gpu and cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    # Seed first: set_determinism turns cudnn.benchmark off, and an explicit cudnn_benchmark wins.
    if settings.random_seed is not None:
        from monai.utils import set_determinism

        set_determinism(seed=settings.random_seed)
    if settings.cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    if settings.tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
    world_size = init_distributed(settings.multi_gpu, device)
    context = BuildContext(
        device=device,
        cuda_available=cuda,
        amp=settings.amp and device.type == "cuda",
        rank=rank,
        world_size=world_size,
        mmar_root=mmar_root,
    )
    if settings.amp and device.type != "cuda":
        context.say_once("amp-off", "amp is true but there is no CUDA device: running without AMP", logging.INFO)
    if settings.multi_gpu and world_size == 1:
        context.say_once(
            "multi-gpu",
            "multi_gpu is true but this is a single process: "
            "launch with torchrun --nproc_per_node=N -m clara_fl train ... for DDP",
        )
    if settings.use_gpu and not cuda:
        logger.debug("use_gpu is true but CUDA is not available: using the CPU")
    return context
