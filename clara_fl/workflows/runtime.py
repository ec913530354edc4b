"""The clara-fl runtime as the config engine sees it: devices, AMP, DDP samplers, datalists, model files.

:class:`ClaraRuntime` implements :class:`clara_fl.config.context.BuildRuntime`; the workflows put it
into every :class:`BuildContext` they build with, so ``clara_fl.config`` never imports upward.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from clara_fl.config.context import BuildContext, NoRuntime
from clara_fl.config.errors import FailureLocation, attach_location
from clara_fl.workflows.failures import CarriedLocations, FailureLocator, case_name, location_note

__all__ = ["ClaraRuntime", "LocatingDataset", "with_runtime"]

PLACED_ITEMS = ("model", "loss")


class ClaraRuntime:
    """Fits components to the process: the machine's device, AMP, one data shard per DDP rank.

    ``locator`` is the failure locator of the config being built (set by
    :func:`~clara_fl.workflows.build.build_components`); the datasets of its data loaders take the locations of
    their transforms from it (:class:`LocatingDataset`).
    """

    search_modules: tuple[str, ...] = ("clara_fl.components",)

    def __init__(self, locator: FailureLocator | None = None) -> None:
        self.locator = locator

    def adapt_arguments(
        self, target: Callable, args: dict[str, Any], path: str, context: BuildContext, dry_run: bool
    ) -> dict[str, Any]:
        """Fit device and AMP arguments to the machine, as Clara did for configs written for GPUs."""
        device = args.get("device")
        if isinstance(device, str) and device.startswith("cuda") and not context.cuda_available:
            context.say_once("cuda-fallback", f'{path}: "device": "{device}" but CUDA is not available; running on CPU')
            args["device"] = "cpu"
        if context.world_size > 1 and _is_data_loader(target) and args.get("sampler") is None and not dry_run:
            # Each rank loads its share. Training shards are padded to equal length (DDP needs the same
            # number of steps everywhere); validation shards are not (metrics are gathered, nothing duplicated).
            from monai.data import DistributedSampler

            # A validation set smaller than the world is padded too: no rank may be left without data.
            even = path.startswith("train.") or len(args["dataset"]) < context.world_size
            args["sampler"] = DistributedSampler(
                args["dataset"], shuffle=bool(args.pop("shuffle", False)), even_divisible=even
            )
        if _is_data_loader(target) and not dry_run and _is_map_style(args.get("dataset")):
            dataset = args["dataset"]
            carried = self.locator.carried(dataset) if self.locator is not None else CarriedLocations([])
            args["dataset"] = LocatingDataset(dataset, carried)
        if _is_engine(target):
            args.setdefault("device", context.device)
            if args.get("amp") and not context.amp:
                context.say_once(
                    "amp-off", "amp is true but there is no CUDA device: running without AMP", logging.INFO
                )
                args["amp"] = False
        return args

    def place(self, name: str, built: Any, context: BuildContext) -> Any:
        if name in PLACED_ITEMS and hasattr(built, "to"):
            return built.to(context.device)
        return built

    def load_datalist(self, list_path: str, key: str, base_dir: str | None) -> list[dict[str, Any]]:
        from clara_fl.data.datalist import load_datalist

        return load_datalist(list_path, key, base_dir)

    def load_model(self, kind: str, file: str, context: BuildContext) -> Any:
        from clara_fl.runtime.checkpoint import load_checkpoint_model, load_torchscript_model

        if kind == "ts_path":
            return load_torchscript_model(file, context.device)
        return load_checkpoint_model(file, context)

    def custom_transform(self, transform: Any, where: str, context: BuildContext) -> Any:
        from clara_fl.components.legacy_transform import NumpyEraFallback

        return NumpyEraFallback(transform, where)


class LocatingDataset:
    """A map-style dataset that names the config item and the case an item failed on, also in a loader worker.

    It carries the locations of the dataset's transforms (:meth:`FailureLocator.carried
    <clara_fl.workflows.failures.FailureLocator.carried>`), pickled with the dataset into spawned workers. In the
    process that loads, the location is attached to the exception; a worker's failure reaches the main process only
    as the text of its traceback, so there the location is added to the exception as a note, which that text
    carries and :mod:`clara_fl.workflows.failures` reads back. Everything else is the wrapped dataset's.

    Args:
        dataset: the map-style dataset a data loader loads from.
        locations: the locations of its transforms.
    """

    def __init__(self, dataset: Any, locations: CarriedLocations) -> None:
        self.dataset = dataset
        self.locations = locations

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        try:
            return self.dataset[index]
        except Exception as e:
            self._name(e, index)
            raise

    def _name(self, error: Exception, index: Any) -> None:
        import torch.utils.data

        location = self.locations.locate(error)
        case = (location.case if location is not None else None) or self._case_of(index)
        if location is not None and torch.utils.data.get_worker_info() is None:
            attach_location(error, FailureLocation(location.file, location.json_path, location.component, case))
        elif (location is not None or case) and hasattr(error, "add_note"):
            parts = (location.file, location.json_path, location.component) if location is not None else None
            error.add_note(location_note(parts, case))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("dataset", "locations"):  # pickling protocols; before unpickled
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _case_of(self, index: Any) -> str | None:
        """The case file of item ``index`` of a MONAI dataset (its ``data`` list), or None."""
        data = getattr(self.dataset, "data", None)
        try:
            return case_name(data[index]) if isinstance(data, (list, tuple)) else None
        except (IndexError, TypeError):
            return None


def _is_map_style(dataset: Any) -> bool:
    import torch.utils.data

    return isinstance(dataset, torch.utils.data.Dataset) and not isinstance(dataset, torch.utils.data.IterableDataset)


def with_runtime(context: BuildContext) -> BuildContext:
    """``context`` with :class:`ClaraRuntime` as its runtime (unless it has one of its own); returns it."""
    if isinstance(context.runtime, NoRuntime):
        context.runtime = ClaraRuntime()
    return context


def _is_data_loader(target: Any) -> bool:
    import torch.utils.data

    return inspect.isclass(target) and issubclass(target, torch.utils.data.DataLoader)


def _is_engine(target: Any) -> bool:
    if not inspect.isclass(target):
        return False
    return any(base.__module__.startswith("monai.engines") and base.__name__ == "Workflow" for base in target.__mro__)
