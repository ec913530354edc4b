"""What building a config needs from the process it runs in, and what the runtime adds to it.

The config engine knows nothing of devices, DDP, datalists or model files. The layers above it
pass those in: :class:`BuildContext` carries the process's facts (device, rank, world size, the
code policy), and its ``runtime`` implements :class:`BuildRuntime` (``clara_fl.workflows`` has
the real one). :class:`NoRuntime` lets the engine check and build configs that need none of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from clara_fl.config.errors import ConfigError
from clara_fl.config.expressions import ExpressionEvaluator
from clara_fl.config.restrictions import Restrictions

__all__ = ["BuildContext", "BuildRuntime", "NoRuntime"]

logger = logging.getLogger(__name__)


class BuildRuntime(Protocol):
    """The services the runtime adds to building components."""

    #: Modules searched first for short names (components whose Clara behaviour differs from MONAI's).
    search_modules: tuple[str, ...]

    def adapt_arguments(
        self, target: Callable, args: dict[str, Any], path: str, context: BuildContext, dry_run: bool
    ) -> dict[str, Any]:
        """Fit a component's arguments to this process (device, AMP, DDP sampler); returns the arguments."""
        ...

    def place(self, name: str, built: Any, context: BuildContext) -> Any:
        """Move a built section item (``model``, ``loss``) where it runs; returns it."""
        ...

    def load_datalist(self, list_path: str, key: str, base_dir: str | None) -> list[dict[str, Any]]:
        """The items of a datalist, paths joined to ``base_dir``."""
        ...

    def load_model(self, kind: str, file: str, context: BuildContext) -> Any:
        """A validation ``model`` entry: ``kind`` is ``"ts_path"`` or ``"ckpt_path"``."""
        ...

    def custom_transform(self, transform: Any, where: str, context: BuildContext) -> Any:
        """A Clara 4.1 config's BYOC transform (from the MMAR's custom/ folder) as it runs: one written for MONAI
        0.8 and earlier is run on numpy arrays once it fails on tensors. ``where`` names it (file, JSON path,
        class)."""
        ...


class NoRuntime:
    """Building without a runtime: arguments as written, no datasets from datalists, no model files."""

    search_modules: tuple[str, ...] = ()

    def adapt_arguments(
        self, target: Callable, args: dict[str, Any], path: str, context: BuildContext, dry_run: bool
    ) -> dict[str, Any]:
        return args

    def place(self, name: str, built: Any, context: BuildContext) -> Any:
        return built

    def load_datalist(self, list_path: str, key: str, base_dir: str | None) -> list[dict[str, Any]]:
        raise ConfigError("datasets from datalists need the clara-fl runtime (clara_fl.workflows.ClaraRuntime)")

    def load_model(self, kind: str, file: str, context: BuildContext) -> Any:
        raise ConfigError("model files need the clara-fl runtime (clara_fl.workflows.ClaraRuntime)")

    def custom_transform(self, transform: Any, where: str, context: BuildContext) -> Any:
        return transform


@dataclass
class BuildContext:
    """What building needs to know about the process it runs in (filled in by the runtime core)."""

    device: Any = "cpu"
    cuda_available: bool = False
    amp: bool = False
    rank: int = 0
    world_size: int = 1
    mmar_root: str | None = None
    evaluator: ExpressionEvaluator = field(default_factory=ExpressionEvaluator)
    # The restricted policy's checks on classes, arguments and paths; None under the full policy.
    restrictions: Restrictions | None = None
    runtime: BuildRuntime = field(default_factory=NoRuntime)
    # A Clara 4.0 config (or one converted from it): its custom components get nested component configs
    # as plain dicts, as Clara 4.0 passed them (docs/clara40.md).
    clara40: bool = False
    _said: set[str] = field(default_factory=set)

    def say_once(self, key: str, message: str, level: int = logging.WARNING) -> None:
        if key not in self._said:
            self._said.add(key)
            logger.log(level, message)
