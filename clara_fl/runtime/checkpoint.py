"""Checkpoints: crash-safe writes and loads that never unpickle arbitrary objects."""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import threading
from collections.abc import Mapping
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.runtime.files import atomic_write

__all__ = [
    "save_atomic",
    "load_checkpoint",
    "load_checkpoint_model",
    "load_torchscript_model",
    "model_state",
    "cpu_snapshot",
    "BackgroundCheckpointWriter",
]

logger = logging.getLogger(__name__)

DEFAULT_TRAIN_CONFIG = "config/config_train.json"


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` crash-safely: a kill at any moment leaves the old file or the new one, never a partial one."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Load a checkpoint with ``weights_only=True``; anything that needs arbitrary unpickling is refused."""
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError("checkpoint not found", file=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConfigError(
            "refusing to load this checkpoint: it holds objects other than tensors and plain data, "
            f"and loading it would run arbitrary code ({str(e).splitlines()[0]})",
            file=path,
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise ConfigError(f"cannot read checkpoint: {type(e).__name__}: {e}", file=path) from e


def model_state(checkpoint: Any, path: str) -> Mapping[str, Any]:
    """The network weights in a Clara checkpoint (``{"model": state_dict, ...}``) or a bare state_dict."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        return checkpoint["model"]
    if isinstance(checkpoint, Mapping) and checkpoint and all(hasattr(v, "shape") for v in checkpoint.values()):
        return checkpoint
    raise ConfigError("checkpoint has no 'model' weights", file=path)


def strip_ddp_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def load_checkpoint_model(path: str, context: Any, train_config: str = DEFAULT_TRAIN_CONFIG) -> Any:
    """Rebuild the network of a checkpoint and load its weights.

    The network comes from the ``train_conf`` stored in the checkpoint (built under the restricted policy: a
    checkpoint may come from anywhere) or, where the checkpoint has none (Clara 4.0 saved none), from the
    ``train.model`` of the MMAR's own ``train_config`` (built under the run's policy, as the MMAR's other configs).

    Args:
        path: the checkpoint file.
        context: the build context; its ``mmar_root`` locates ``train_config``.
        train_config: the MMAR's train config, relative to its root.

    Raises:
        ConfigError: the checkpoint cannot be read, neither it nor the MMAR describes the network, the network
            is refused or fails to build, or the weights do not fit it.
    """
    from clara_fl.config.expressions import RestrictedEvaluator
    from clara_fl.config.restrictions import Restrictions

    checkpoint = load_checkpoint(path)
    train_conf = checkpoint.get("train_conf") if isinstance(checkpoint, Mapping) else None
    if (
        isinstance(train_conf, Mapping)
        and isinstance(train_conf.get("train"), Mapping)
        and "model" in train_conf["train"]
    ):
        restrictions = context.restrictions or Restrictions(
            context.mmar_root or os.path.dirname(os.path.abspath(path)), extra_roots=context.runtime.search_modules
        )
        restricted = dataclasses.replace(context, evaluator=RestrictedEvaluator(), restrictions=restrictions)
        model = _build_network(train_conf, f"{path}#train_conf", restricted)
    else:
        network, file, clara40 = _mmar_train_network(path, context.mmar_root, train_config)
        logger.info("%s has no train_conf: the network is rebuilt from %s", path, file)
        model = _build_network(network, file, dataclasses.replace(context, clara40=clara40 or context.clara40))
    load_weights(model, model_state(checkpoint, path), path, strict=True)
    return model.eval()


def _mmar_train_network(path: str, mmar_root: str | None, train_config: str) -> tuple[dict[str, Any], str, bool]:
    """``{"train": {"model": ...}}`` of the MMAR's train config with its variables filled, the config's name, and
    whether it is a Clara 4.0 config."""
    from clara_fl.config.mmar import DEFAULT_ENVIRONMENT, read_config, resolve_in_mmar

    if not mmar_root or not os.path.isfile(resolve_in_mmar(mmar_root, train_config)):
        where = f"the MMAR has no {train_config}" if mmar_root else "no MMAR was given"
        raise ConfigError(
            f"checkpoint has no 'train_conf' to rebuild the network from, and {where}; "
            'save it with "train_conf": "@conf" in the CheckpointSaver\'s save_dict, or give a model component',
            file=path,
        )
    environment = DEFAULT_ENVIRONMENT if os.path.isfile(resolve_in_mmar(mmar_root, DEFAULT_ENVIRONMENT)) else None
    raw = read_config(mmar_root, train_config, environment)
    section = raw.config.get("train")
    if not isinstance(section, Mapping) or not isinstance(section.get("model"), Mapping):
        raise ConfigError(
            "no train.model component to rebuild the checkpoint's network from",
            file=raw.display_file,
            path="train.model",
        )
    model = raw.variables.substitute(section["model"], "train.model")
    return {"train": {"model": model}}, raw.display_file, raw.clara40


def _build_network(config: Mapping[str, Any], file: str, context: Any) -> Any:
    """``train.model`` of ``config``, judged whole (a dry run) before any of it is built."""
    from clara_fl.config.resolver import ConfigResolver

    try:
        ConfigResolver(config, file=file, context=context, dry_run=True).get("model", "train")
        return ConfigResolver(config, file=file, context=context).get("model", "train")
    except ConfigError as e:
        e.located(file=file)
        raise


def load_weights(model: Any, state: Mapping[str, Any], source: str, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load ``state`` into ``model``; a shape or key mismatch is reported naming ``source``."""
    try:
        result = model.load_state_dict(strip_ddp_prefix(state), strict=strict)
    except RuntimeError as e:
        raise ConfigError(f"weights do not fit the network: {str(e).splitlines()[0]}", file=source) from e
    return list(result.missing_keys), list(result.unexpected_keys)


def load_torchscript_model(path: str, device: Any) -> Any:
    """A TorchScript model from the configured ts_path."""
    import torch

    try:
        return torch.jit.load(path, map_location=device).eval()
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"cannot load TorchScript model: {str(e).splitlines()[0]}", file=path) from e


def cpu_snapshot(obj: Any) -> Any:
    """A copy of ``obj`` whose tensors are detached CPU copies and whose dicts/lists are new containers.

    Taken on the training thread, it is a consistent picture that later training steps cannot change.
    """
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: cpu_snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [cpu_snapshot(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(cpu_snapshot(v) for v in obj)
    return obj


class BackgroundCheckpointWriter:
    """Writes snapshots of a state to one file with :func:`save_atomic`, on a background thread.

    :meth:`submit` copies the state to the CPU on the caller's thread, waits for the previous write if
    it is still going (so at most one snapshot waits in memory besides the live state), and starts the
    next write. A failed write is logged and the next snapshot tries again.

    Args:
        path: the file every snapshot replaces.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._thread: threading.Thread | None = None

    def submit(self, state: Any) -> None:
        snapshot = cpu_snapshot(state)
        self.flush()
        self._thread = threading.Thread(target=self._write, args=(snapshot,), name="clara-fl-state-writer", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Wait until the last submitted snapshot is on disk (or its write failed)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _write(self, snapshot: Any) -> None:
        try:
            save_atomic(snapshot, self.path)
        except Exception as e:  # a full disk must not stop training; the previous file stays whole
            logger.error("could not write %s (%s); the previous state stays in place", self.path, e)
