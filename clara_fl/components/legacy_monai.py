"""Names MONAI removed since 0.8 that Clara 4.0 BYOC code imports, added back (only where missing).

``install_legacy_names()`` runs when a Clara 4.0 config is built, before the MMAR's custom/ code is
imported. It only adds names that today's MONAI lacks, so code written for current MONAI and 4.1 configs
see no difference.
"""

from __future__ import annotations

from typing import Any

__all__ = ["install_legacy_names", "LEGACY_FUNCTIONS"]

# module -> {removed name: (module, today's name)}
LEGACY_FUNCTIONS: dict[str, dict[str, tuple[str, str]]] = {
    "monai.metrics": {
        "compute_meandice": ("monai.metrics", "compute_dice"),
        "compute_meaniou": ("monai.metrics", "compute_iou"),
    },
}


def _legacy_classes() -> dict[str, dict[str, Any]]:
    from monai.transforms import EnsureChannelFirst, EnsureChannelFirstd

    class AddChannel(EnsureChannelFirst):
        """MONAI < 1.0 AddChannel: a channel dimension in front."""

        def __init__(self) -> None:
            super().__init__(channel_dim="no_channel")

    class AddChanneld(EnsureChannelFirstd):
        """MONAI < 1.0 AddChanneld: a channel dimension in front of each key."""

        def __init__(self, keys: Any, allow_missing_keys: bool = False) -> None:
            super().__init__(keys, allow_missing_keys=allow_missing_keys, channel_dim="no_channel")

    class AsChannelFirstd(EnsureChannelFirstd):
        """MONAI < 1.0 AsChannelFirstd: the channel dimension moved from last (channel_dim) to first."""

        def __init__(self, keys: Any, channel_dim: int = -1, allow_missing_keys: bool = False) -> None:
            super().__init__(keys, allow_missing_keys=allow_missing_keys, channel_dim=channel_dim)

    return {
        "monai.transforms": {"AddChannel": AddChannel, "AddChanneld": AddChanneld, "AsChannelFirstd": AsChannelFirstd}
    }


def install_legacy_names() -> list[str]:
    """Add the removed names to their MONAI modules where missing; returns the dotted names added."""
    import importlib

    added = []
    for module_name, names in LEGACY_FUNCTIONS.items():
        module = importlib.import_module(module_name)
        for name, (source, today) in names.items():
            if not hasattr(module, name):
                setattr(module, name, getattr(importlib.import_module(source), today))
                added.append(f"{module_name}.{name}")
    for module_name, classes in _legacy_classes().items():
        module = importlib.import_module(module_name)
        for name, cls in classes.items():
            if not hasattr(module, name):
                setattr(module, name, cls)
                added.append(f"{module_name}.{name}")
    return added
