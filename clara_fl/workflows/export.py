"""Exporting a checkpoint to TorchScript, as Clara's ``medl.apps.export`` did."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.config.mmar import add_custom_to_path
from clara_fl.config.resolver import BuildContext
from clara_fl.runtime.files import atomic_write
from clara_fl.workflows.runtime import with_runtime

__all__ = ["export_torchscript"]

logger = logging.getLogger(__name__)


def export_torchscript(
    model_path: str, output_path: str, input_shape: Sequence[int], mmar_root: str | None = None
) -> str:
    """Rebuild the network of ``model_path`` (from its train_conf, else from the train config of ``mmar_root``),
    script it (trace if scripting fails), verify, save.

    Returns ``"script"`` or ``"trace"``: how the model was converted.

    Args:
        model_path: the checkpoint.
        output_path: the TorchScript file to write.
        input_shape: an example input's shape, to check (and trace) the network with.
        mmar_root: the MMAR: its custom/ code, its train config for checkpoints without train_conf.

    Raises:
        ConfigError: the network cannot be rebuilt, or its export differs from it.
        UsageError: the network rejects the input shape (``--input_shape``).
    """
    import torch

    from clara_fl.runtime.checkpoint import load_checkpoint_model

    if mmar_root:
        add_custom_to_path(mmar_root)
    model = load_checkpoint_model(
        model_path, with_runtime(BuildContext(device=torch.device("cpu"), mmar_root=mmar_root))
    )
    example = torch.rand(*input_shape)
    with torch.no_grad():
        try:
            expected = model(example)
        except Exception as e:
            raise UsageError(
                "--input_shape", str(list(input_shape)), f"the network rejects it: {type(e).__name__}: {e}"
            ) from e
        try:
            exported, how = torch.jit.script(model), "script"
        except Exception as e:  # scripting fails on dynamic Python; tracing records one path instead
            logger.info(
                "torch.jit.script failed (%s); tracing with input shape %s", type(e).__name__, list(input_shape)
            )
            exported, how = torch.jit.trace(model, example), "trace"
        if not torch.allclose(exported(example), expected, atol=1e-5, rtol=1e-4):
            raise ConfigError(
                "the exported TorchScript model does not reproduce the checkpoint's output", file=output_path
            )
    atomic_write(output_path, lambda f: torch.jit.save(exported, f))
    logger.info("exported %s to %s (%s)", model_path, os.path.abspath(output_path), how)
    return how
