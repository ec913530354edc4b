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

__all__ = [
    "LEGACY_NAMES",
    "REMOVED_NAMES",
    "translate_args",
    "translate_expression",
    "translate_threshold_values",
    "from_engine",
    "missing_requirement",
]

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
    # MONAI 0.8's fully convolutional torchvision wrapper: TorchVisionFCModel with use_conv (n_classes -> num_classes).
    "TorchVisionFullyConvModel": LegacyName("TorchVisionFCModel", {"use_conv": True}),
}

# Handlers in a handlers list are moved into post_transforms (clara_fl.config.removed_handlers); elsewhere:
REMOVED_NAMES: dict[str, str] = {
    "SegmentationSaver": "use the SaveImaged transform in post_transforms instead",
    "TransformInverter": "use the Invertd transform in post_transforms instead",
    "ClassificationSaverd": "use the ClassificationSaver handler instead",
    "SplitChanneld": "use SplitDimd (dim=0) instead",
    "SplitChannel": "use SplitDim (dim=0) instead",
}

# Optional packages some MONAI classes need: class -> (module to import, what to install).
REQUIRED_PACKAGES: dict[str, tuple[str, str]] = {
    "TorchVisionFCModel": ("torchvision", "torchvision"),
    "TorchVisionFullyConvModel": ("torchvision", "torchvision"),
    "TorchVisiond": ("torchvision", "torchvision"),
    "TorchVision": ("torchvision", "torchvision"),
    "AddInitialSeedPointd": ("skimage", "scikit-image (pip install scikit-image)"),
    "FindAllValidSlicesd": ("skimage", "scikit-image (pip install scikit-image)"),
}
# Whole-slide readers named by image_reader_name/reader: lower-case name -> (module, what to install).
READER_PACKAGES: dict[str, tuple[str, str]] = {
    "cucim": ("cucim", "cucim (NVIDIA cuCIM, which also needs a CUDA GPU)"),
    "openslide": ("openslide", "openslide-python and the OpenSlide library"),
    "tifffile": ("tifffile", "tifffile"),
}
_DEEPGROW_MODULE = "monai.apps.deepgrow"

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
    """Rename or merge arguments that MONAI renamed or removed since Clara 4.0/4.1; returns a new dict."""
    args = dict(args)
    if "dimensions" in args and _accepts(target, "dimensions") is False and _accepts(target, "spatial_dims"):
        args.setdefault("spatial_dims", args.pop("dimensions"))
    # Random transforms' as_tensor_output (MONAI < 0.9): outputs are tensors now.
    if "as_tensor_output" in args and _accepts(target, "as_tensor_output") is False:
        args.pop("as_tensor_output")
    # Deepgrow transforms ran on batches inside the engine (batched=True); they now run on decollated items.
    deepgrow = getattr(target, "__module__", "").startswith(_DEEPGROW_MODULE)
    if "batched" in args and deepgrow and _accepts(target, "batched") is False:
        args.pop("batched")
    target_name = getattr(target, "__name__", "")
    if target_name == "TorchVisionFCModel":
        if "n_classes" in args:
            args.setdefault("num_classes", args.pop("n_classes"))
        pool_size, pool_stride = args.pop("pool_size", None), args.pop("pool_stride", None)
        if pool_size is not None or pool_stride is not None:
            stride = 1 if pool_stride is None else pool_stride
            args.setdefault("pool", ["avg", {"kernel_size": pool_size or [7, 7], "stride": stride}])
    if target_name == "PersistentDataset" and "cache_dir" not in args:
        args["cache_dir"] = None  # MONAI < 0.9 default: no persistent cache, transforms run every epoch
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
_THRESHOLD_VALUES = re.compile(
    r"threshold_values\s*=\s*True(?P<sep>\s*,\s*)?(?:logit_thresh\s*=\s*(?P<thresh>[-+0-9.eE]+))?"
)
_DROPPED_THRESHOLD_ARGS = re.compile(r"(?:,\s*)?\b(?:threshold_values\s*=\s*False|logit_thresh\s*=\s*[-+0-9.eE]+)")


def _threshold(match: re.Match) -> str:
    text = f"threshold={match.group('thresh') or '0.5'}"
    return text + (match.group("sep") or "") if match.group("thresh") is None else text


def translate_expression(code: str) -> str:
    """Rewrite code for today's MONAI: ``from_engine([... '*_meta_dict' ...])`` (metadata now lives on
    MetaTensors) and AsDiscrete's ``threshold_values=True, logit_thresh=t`` (now ``threshold=t``)."""
    if "from_engine" in code and _META_DICT_KEY.search(code):
        code = re.sub(r"(?:monai\.handlers\.)?from_engine\(", "_clara_from_engine(", code)
    return translate_threshold_values(code)


def translate_threshold_values(code: str) -> str:
    """AsDiscrete's ``threshold_values=True, logit_thresh=t`` (MONAI < 0.8) as ``threshold=t`` in a code string."""
    if "threshold_values" in code:
        code = _THRESHOLD_VALUES.sub(_threshold, code)
        code = _DROPPED_THRESHOLD_ARGS.sub("", code)
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


def missing_requirement(name: str, args: Mapping[str, Any]) -> ConfigError | None:
    """A one-line error naming the package a class or its whole-slide reader needs, when it is not installed."""
    import importlib.util

    needs = [REQUIRED_PACKAGES[name]] if name in REQUIRED_PACKAGES else []
    for key in ("image_reader_name", "reader"):
        reader = args.get(key)
        if isinstance(reader, str) and reader.lower() in READER_PACKAGES:
            needs.append(READER_PACKAGES[reader.lower()])
    for module, install in needs:
        if importlib.util.find_spec(module) is None:
            return ConfigError(f"{name} needs the package {install}, which is not installed here")
    return None


def removed_name_error(name: str) -> ConfigError | None:
    hint = REMOVED_NAMES.get(name)
    return ConfigError(f"'{name}' was removed from MONAI; {hint}") if hint else None
