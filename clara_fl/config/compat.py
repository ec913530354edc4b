"""Running Clara 4.x configs written for older MONAI unchanged.

Each rule maps what a 4.1 config says onto what MONAI 1.6 accepts; every rule here was hit by a
real config in shared/reference or is listed in MONAI's deprecation notes.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clara_fl.config.errors import ConfigError

__all__ = ["LEGACY_NAMES", "REMOVED_NAMES", "translate_args", "translate_expression", "from_engine"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LegacyName:
    """A removed class name and the MONAI 1.6 class plus default arguments that do the same."""

    replacement: str
    defaults: Mapping[str, Any]


LEGACY_NAMES: dict[str, LegacyName] = {
    "AddChanneld": LegacyName("EnsureChannelFirstd", {"channel_dim": "no_channel"}),
    "AddChannelD": LegacyName("EnsureChannelFirstd", {"channel_dim": "no_channel"}),
    "AddChannelDict": LegacyName("EnsureChannelFirstd", {"channel_dim": "no_channel"}),
    "AddChannel": LegacyName("EnsureChannelFirst", {"channel_dim": "no_channel"}),
    "AsChannelFirstd": LegacyName("EnsureChannelFirstd", {"channel_dim": -1}),
    "AsChannelFirstD": LegacyName("EnsureChannelFirstd", {"channel_dim": -1}),
    "AsChannelFirstDict": LegacyName("EnsureChannelFirstd", {"channel_dim": -1}),
    "AsChannelFirst": LegacyName("EnsureChannelFirst", {"channel_dim": -1}),
    # ToTensord became invertible in MONAI 0.9: inverting it yields numpy arrays, which breaks Invertd
    # on the crops before it (Clara 4.1's own validation config). EnsureTyped converts the same way
    # and records no inverse.
    "ToTensord": LegacyName("EnsureTyped", {"data_type": "tensor"}),
    "ToTensorD": LegacyName("EnsureTyped", {"data_type": "tensor"}),
    "ToTensorDict": LegacyName("EnsureTyped", {"data_type": "tensor"}),
}

REMOVED_NAMES: dict[str, str] = {
    "SegmentationSaver": "use the SaveImaged transform in post_transforms instead",
    "TransformInverter": "use the Invertd transform in post_transforms instead",
}

_ASDISCRETE = {"AsDiscrete", "AsDiscreted", "AsDiscreteD", "AsDiscreteDict"}


def _accepts(target: Callable, arg: str) -> bool | None:
    """Whether ``target`` takes a keyword ``arg``; None when it takes ``**kwargs`` (unknown)."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None
    if arg in params:
        return True
    return None if any(p.kind is p.VAR_KEYWORD for p in params.values()) else False


def translate_args(name: str, target: Callable, args: dict[str, Any]) -> dict[str, Any]:
    """Rename or merge arguments that MONAI renamed or removed since Clara 4.1; returns a new dict."""
    args = dict(args)
    if "dimensions" in args and _accepts(target, "dimensions") is False and _accepts(target, "spatial_dims"):
        args.setdefault("spatial_dims", args.pop("dimensions"))
    if name in _ASDISCRETE or getattr(target, "__name__", "") in _ASDISCRETE:
        n_classes = args.pop("n_classes", None)
        to_onehot = args.get("to_onehot")
        if n_classes is not None:
            if to_onehot is True:
                args["to_onehot"] = n_classes
            elif isinstance(to_onehot, list):
                args["to_onehot"] = [n_classes if v is True else v for v in to_onehot]
        # MONAI < 0.8: threshold_values switched thresholding on, at logit_thresh (default 0.5).
        threshold_values = args.pop("threshold_values", None)
        logit_thresh = args.pop("logit_thresh", None)
        if threshold_values:
            args.setdefault("threshold", 0.5 if logit_thresh is None else logit_thresh)
    return args


_META_DICT_KEY = re.compile(r"['\"]\w+_meta_dict['\"]")


def translate_expression(code: str) -> str:
    """Rewrite ``from_engine([... '*_meta_dict' ...])``: metadata now lives on MetaTensors."""
    if "from_engine" in code and _META_DICT_KEY.search(code):
        return re.sub(r"(?:monai\.handlers\.)?from_engine\(", "_clara_from_engine(", code)
    return code


def from_engine(keys: Any, first: bool = False) -> Callable:
    """:func:`monai.handlers.from_engine` that also serves ``<key>_meta_dict`` from ``<key>.meta``."""
    from monai.handlers import from_engine as monai_from_engine
    from monai.utils import ensure_tuple

    wanted = [k for k in ensure_tuple(keys) if isinstance(k, str) and k.endswith("_meta_dict")]
    inner = monai_from_engine(keys, first=first)

    def with_meta(item: Any) -> Any:
        if not isinstance(item, dict):
            return item
        missing = [k for k in wanted if k not in item and hasattr(item.get(k[: -len("_meta_dict")]), "meta")]
        if not missing:
            return item
        item = dict(item)
        for k in missing:
            item[k] = item[k[: -len("_meta_dict")]].meta
        return item

    def _wrapper(data: Any) -> Any:
        data = [with_meta(d) for d in data] if isinstance(data, list) else with_meta(data)
        return inner(data)

    return _wrapper


def removed_name_error(name: str) -> ConfigError | None:
    hint = REMOVED_NAMES.get(name)
    return ConfigError(f"'{name}' was removed from MONAI; {hint}") if hint else None
