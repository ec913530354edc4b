"""``configs/metadata.json`` of a bundle made from an MMAR: versions, task, description, network input/output."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["bundle_metadata", "mmar_description"]

SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"


def mmar_description(mmar_root: str) -> str:
    """The first paragraph of the MMAR's ``docs/README.md`` (headings and markup stripped), or an empty string."""
    readme = os.path.join(mmar_root, "docs", "README.md")
    if not os.path.isfile(readme):
        return ""
    with open(readme, encoding="utf-8") as f:
        paragraphs = [p.strip() for p in f.read().split("\n\n")]
    for paragraph in paragraphs:
        if paragraph and not paragraph.startswith(("#", "```", "|", "!")):
            return re.sub(r"\s+", " ", re.sub(r"[*`]", "", paragraph))
    return ""


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _spatial_shape(train: Mapping[str, Any], variables: Mapping[str, Any]) -> list[int] | None:
    summary = train.get("network_summary")
    if isinstance(summary, dict) and isinstance(summary.get("input_size"), list) and len(summary["input_size"]) > 2:
        shape = summary["input_size"][2:]
        if all(_int_or_none(v) for v in shape):
            return list(shape)
    roi = variables.get("roi_size")
    return list(roi) if isinstance(roi, list) and all(_int_or_none(v) for v in roi) else None


def bundle_metadata(
    name: str, train: Mapping[str, Any], variables: Mapping[str, Any], description: str, versions: Mapping[str, str]
) -> dict[str, Any]:
    """The metadata of a bundle exported from an MMAR.

    Args:
        name: the bundle's name (the MMAR folder's name).
        train: the train config as written (for ``network_summary`` and the model's channel arguments).
        variables: the train config's filled-in variables (Clara's values).
        description: what the MMAR's docs say it is.
        versions: ``monai``, ``torch``, ``numpy`` and ``clara_fl`` versions of the exporting environment.
    """
    model_args = ((train.get("train") or {}).get("model") or {}).get("args") or {}

    def channels(arg: str, variable: str) -> int | None:
        value = model_args.get(arg)
        if isinstance(value, str):
            value = variables.get(value.strip("{}"))
        return _int_or_none(value) or _int_or_none(variables.get(variable))

    task = str(variables.get("PROCESSING_TASK") or "")
    spatial = _spatial_shape(train, variables)
    tensor = {"type": "image", "dtype": "float32", "is_patch_data": True}
    inputs = {
        **tensor,
        "format": "magnitude",
        "num_channels": channels("in_channels", "INPUT_CHANNELS"),
        "value_range": [],
    }
    outputs = {
        **tensor,
        "format": task or "unknown",
        "num_channels": channels("out_channels", "OUTPUT_CHANNELS"),
        "value_range": [],
    }
    if spatial:
        inputs["spatial_shape"] = outputs["spatial_shape"] = spatial
    return {
        "schema": SCHEMA,
        "version": "0.1.0",
        "changelog": {
            "0.1.0": f"exported from the Clara MMAR '{name}' by clara-fl {versions.get('clara_fl', '')}".rstrip()
        },
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"],
        "numpy_version": versions["numpy"],
        "required_packages_version": {
            "nibabel": versions.get("nibabel", ""),
            "pytorch-ignite": versions.get("ignite", ""),
        },
        "name": name,
        "task": f"{task} ({name})" if task else name,
        "description": description or f"Clara MMAR '{name}' as a MONAI bundle.",
        "authors": "exported from a Clara Train MMAR",
        "copyright": "see the MMAR's license",
        "network_data_format": {"inputs": {"image": inputs}, "outputs": {"pred": outputs}},
    }
