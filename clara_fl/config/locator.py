"""Finding the class behind a component's ``name`` (short name) or ``path`` (dotted path)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from functools import cache
from typing import Any

from clara_fl.config.errors import ConfigError, did_you_mean

__all__ = ["SEARCH_MODULES", "locate_component", "locate_name", "locate_path"]

# Where Clara looked for short names, in order. The runtime may put modules before these (clara-fl's
# components whose Clara behaviour differs from MONAI's: fixed checkpoint names, lazy writers).
SEARCH_MODULES: tuple[str, ...] = (
    "monai.transforms",
    "monai.handlers",
    "monai.engines",
    "monai.inferers",
    "monai.losses",
    "monai.networks.nets",
    "monai.optimizers",
    "monai.data",
    "torch.optim",
    "torch.optim.lr_scheduler",
    "torch.nn",
    "torch.utils.data",
    "ignite.metrics",
)


@cache
def _module(name: str) -> Any:
    return importlib.import_module(name)


def _public_names(first: tuple[str, ...] = ()) -> set[str]:
    names: set[str] = set()
    for module_name in first + SEARCH_MODULES:
        module = _module(module_name)
        names.update(n for n in dir(module) if n[:1].isupper())
    return names


@cache
def _locate(name: str, first: tuple[str, ...] = ()) -> Any:
    for module_name in first + SEARCH_MODULES:
        found = getattr(_module(module_name), name, None)
        if callable(found):
            return found
    return None


def locate_name(name: str, first: tuple[str, ...] = ()) -> Any:
    """The callable for a Clara short name such as ``"UNet"`` or ``"StepLR"``.

    Args:
        name: the short name.
        first: modules searched before :data:`SEARCH_MODULES`.

    Raises:
        ConfigError: no module has it (with the closest known name).
    """
    found = _locate(name, tuple(first))
    if found is None:
        raise ConfigError(
            f"unknown component name '{name}'{did_you_mean(name, _public_names(tuple(first)))}; "
            "use a MONAI/PyTorch/Ignite class name or a dotted 'path' for your own class"
        )
    return found


def locate_path(path: str) -> Any:
    """The callable at a dotted ``path`` such as ``"myNetworkArch.MyBasicUNet"`` (MMAR custom/ is importable)."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"'path' must be a dotted path 'module.ClassName', got '{path}'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"cannot import module '{module_name}' for path '{path}' ({e}); "
            "BYOC modules belong in the MMAR's custom/ folder"
        ) from e
    except Exception as e:  # the user's module failed while importing
        raise ConfigError(f"importing module '{module_name}' failed: {type(e).__name__}: {e}") from e
    found = getattr(module, attr, None)
    if found is None:
        public = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(f"module '{module_name}' has no '{attr}'{did_you_mean(attr, public)}")
    return found


def locate_component(spec: Mapping[str, Any]) -> Any | None:
    """The class a component spec names, to look at (its signature) before the config has been checked.

    A ``path`` in a module that importing could run code the restricted policy has not admitted (anything
    but a module imported already, a library module of the catalog or BYOC code in an MMAR's ``custom/``
    folder, see :func:`clara_fl.config.restrictions.import_is_harmless`) is not imported: the result is None.

    Raises:
        ConfigError: ``spec`` is no component or a malformed one, or the class cannot be found.
    """
    from clara_fl.config import compat
    from clara_fl.config.restrictions import import_is_harmless
    from clara_fl.config.specs import parse_component

    parsed = parse_component(spec, "")
    if parsed is None:
        raise ConfigError("not a component: it has no 'name' or 'path'")
    if parsed.path is not None:
        return locate_path(parsed.path) if import_is_harmless(parsed.path.rpartition(".")[0]) else None
    legacy = compat.LEGACY_NAMES.get(parsed.target)
    return locate_name(legacy.replacement if legacy else parsed.target)
