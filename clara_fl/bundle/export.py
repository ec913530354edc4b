"""Writing a MONAI bundle folder from an MMAR: configs, metadata, weights, BYOC scripts, docs.

Every config is read and translated before anything is written; the bundle is assembled in a
temporary folder beside the destination and moved into place, so a failed export leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clara_fl.bundle.inference import derive_inference_config
from clara_fl.bundle.metadata import bundle_metadata, mmar_description
from clara_fl.bundle.translate import ClaraConfig, translate_evaluate, translate_inference, translate_train
from clara_fl.bundle.variables import BundleVariables, merge_variables
from clara_fl.config.errors import ConfigError
from clara_fl.config.jsonio import load_json
from clara_fl.config.mmar import DEFAULT_ENVIRONMENT, read_config, resolve_in_mmar

__all__ = ["ExportRequest", "ExportedBundle", "export_bundle"]

DEFAULT_TRAIN = "config/config_train.json"
DEFAULT_VALIDATION = "config/config_validation.json"
DEFAULT_INFERENCE = "config/config_inference.json"


@dataclass(frozen=True)
class ExportRequest:
    """What to export: the MMAR, where to, which configs (None: the default, skipped when the MMAR has none)."""

    mmar: str
    output: str
    train_config: str = DEFAULT_TRAIN
    validation_config: str | None = None
    inference_config: str | None = None
    environment: str = DEFAULT_ENVIRONMENT
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportedBundle:
    """What was written."""

    root: str
    configs: list[str]
    model: str | None
    scripts: list[str]


def _custom_modules(mmar_root: str) -> frozenset[str]:
    custom = os.path.join(mmar_root, "custom")
    if not os.path.isdir(custom):
        return frozenset()
    names = set()
    for entry in os.listdir(custom):
        if entry.endswith(".py"):
            names.add(entry[:-3])
        elif os.path.isdir(os.path.join(custom, entry)) and not entry.startswith((".", "__")):
            names.add(entry)
    return frozenset(names)


def _read(
    request: ExportRequest, config_file: str, custom: frozenset[str], content: Mapping[str, Any] | None = None
) -> ClaraConfig:
    """``config_file`` of the MMAR (or ``content`` in its name) as read for translation."""
    raw = read_config(request.mmar, config_file, request.environment, request.overrides, config=content)
    environment: dict[str, Any] = {}
    if request.environment:
        with open(resolve_in_mmar(raw.mmar_root, request.environment), encoding="utf-8") as f:
            environment = json.load(f)  # already checked by read_config
    values = merge_variables(raw.config, environment, request.overrides)
    return ClaraConfig(
        content=raw.config,
        variables=BundleVariables(values, raw.mmar_root, raw.display_file),
        file=raw.display_file,
        custom_modules=custom,
        resolved_variables=raw.variables.as_dict(),
    )


def _derived_inference(request: ExportRequest, validation: ClaraConfig, custom: frozenset[str]) -> ClaraConfig:
    """The validation config made an inference config (:mod:`clara_fl.bundle.inference`), read as the MMAR's own
    inference config is."""
    written = load_json(resolve_in_mmar(os.path.abspath(request.mmar), validation.file))  # placeholders kept
    derived = derive_inference_config(written, validation.file, validation.resolved_variables or {}, custom)
    return _read(request, validation.file, custom, content=derived)


def _optional(request: ExportRequest, given: str | None, default: str) -> str | None:
    if given is not None:
        return given
    return default if os.path.isfile(resolve_in_mmar(os.path.abspath(request.mmar), default)) else None


def _trained_weights(mmar_root: str, checkpoint: str | None) -> dict[str, Any] | None:
    """The MMAR's trained network weights (Clara checkpoints hold ``{"model": ..., "train_conf": ...}``)."""
    if not checkpoint:
        return None
    path = resolve_in_mmar(mmar_root, checkpoint)
    if not os.path.isfile(path):
        return None
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"cannot read the trained model ({type(e).__name__}: {e})", file=path) from e
    weights = saved.get("model", saved) if isinstance(saved, dict) else None
    if not isinstance(weights, dict):
        raise ConfigError("expected a checkpoint with the network's state_dict under 'model'", file=path)
    return weights


def _versions() -> dict[str, str]:
    import ignite
    import monai
    import nibabel
    import numpy
    import torch

    from clara_fl import __version__

    return {
        "monai": monai.__version__,
        "torch": torch.__version__.split("+")[0],
        "numpy": numpy.__version__,
        "nibabel": nibabel.__version__,
        "ignite": ignite.__version__,
        "clara_fl": __version__,
    }


def export_bundle(request: ExportRequest) -> ExportedBundle:
    """Translate the MMAR's configs and write the bundle folder ``request.output``.

    Args:
        request: the MMAR, the destination (must not exist or be empty) and the configs to translate.

    Raises:
        ConfigError: a config cannot be read or has a construct with no bundle equivalent, or the destination
            is not empty. Nothing is written then.
    """
    mmar_root = os.path.abspath(request.mmar)
    output = os.path.abspath(request.output)
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise ConfigError("the bundle folder exists and is not empty; choose a new folder", file=output)
    custom = _custom_modules(mmar_root)
    train = _read(request, request.train_config, custom)
    configs = {"train.json": translate_train(train)}
    validation = _optional(request, request.validation_config, DEFAULT_VALIDATION)
    inference = _optional(request, request.inference_config, DEFAULT_INFERENCE)
    derived_from = validation if inference is None else None
    if validation is not None:
        validation_config = _read(request, validation, custom)
        configs["evaluate.json"] = translate_evaluate(validation_config, train)
        if derived_from is not None:
            derived = _derived_inference(request, validation_config, custom)
            configs["inference.json"] = translate_inference(derived, train)
    if inference is not None:
        configs["inference.json"] = translate_inference(_read(request, inference, custom), train)
    resolved = dict(train.resolved_variables or {})
    weights = _trained_weights(mmar_root, resolved.get("MMAR_CKPT"))
    name = os.path.basename(mmar_root.rstrip(os.sep))
    metadata = bundle_metadata(name, train.content, resolved, mmar_description(mmar_root), _versions())

    os.makedirs(os.path.dirname(output), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".bundle-", dir=os.path.dirname(output))
    try:
        _write_json(os.path.join(staging, "configs", "metadata.json"), metadata)
        for file_name, content in configs.items():
            _write_json(os.path.join(staging, "configs", file_name), content)
        model = None
        if weights is not None:
            import torch

            os.makedirs(os.path.join(staging, "models"))
            torch.save(weights, os.path.join(staging, "models", "model.pt"))
            model = os.path.join(output, "models", "model.pt")
        scripts = _copy_scripts(mmar_root, staging)
        _write_readme(staging, name, mmar_root, request, sorted(configs), weights is not None, scripts, derived_from)
        if os.path.isdir(output):
            os.rmdir(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportedBundle(output, [os.path.join(output, "configs", n) for n in sorted(configs)], model, scripts)


def _write_json(path: str, content: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=4)
        f.write("\n")


def _copy_scripts(mmar_root: str, staging: str) -> list[str]:
    custom = os.path.join(mmar_root, "custom")
    if not os.path.isdir(custom):
        return []
    shutil.copytree(custom, os.path.join(staging, "scripts"), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return sorted(
        os.path.relpath(os.path.join(d, f), staging)
        for d, _, files in os.walk(os.path.join(staging, "scripts"))
        for f in files
    )


def _write_readme(
    staging: str,
    name: str,
    mmar_root: str,
    request: ExportRequest,
    configs: list[str],
    has_model: bool,
    scripts: list[str],
    inference_from: str | None = None,
) -> None:
    lines = [
        f"# {name}",
        "",
        f"A MONAI bundle exported by `clara-fl bundle export` from the Clara Train MMAR `{mmar_root}`",
        f"(train config `{request.train_config}`). It needs MONAI (with its `fire` extra), PyTorch, pytorch-ignite and",
        "nibabel; nothing of clara-fl is imported when it runs.",
        "",
        "## Run it (from this folder)",
        "",
        "```bash",
        "python -m monai.bundle run --config_file configs/train.json \\",
        "    --dataset_dir /data --dataset_json /data/dataset.json",
    ]
    if "evaluate.json" in configs:
        lines.append(
            "python -m monai.bundle run --config_file configs/evaluate.json     # on models/model.pt, metrics to eval/"
        )
    if "inference.json" in configs:
        lines.append("python -m monai.bundle run --config_file configs/inference.json    # predictions to eval/")
    lines += [
        "python -m monai.bundle ckpt_export --config_file configs/train.json --net_id network_def \\",
        "    --ckpt_file models/model.pt --filepath models/model.ts",
        "```",
        "",
        "Every Clara variable of the MMAR (config globals and environment.json) is a bundle variable of the same",
        'name that `--NAME value` overrides (`--epochs 2`, `--learning_rate 0.001`, `--roi_size "[96,96,96]"`);',
        "`DATA_ROOT` and `DATASET_JSON` are also MONAI's `dataset_dir` and `dataset_json`. `MMAR_*` paths are under",
        "`bundle_root` (default: the current folder; pass `--bundle_root` to run from elsewhere).",
        "",
        "## How it differs from the MMAR",
        "",
        "- `models/model.pt` holds the network's weights only"
        + (" (the MMAR's trained model)." if has_model else "; training writes it (best key metric)."),
        "- The evaluate and inference configs load `models/model.pt`; Clara's TorchScript `model` entry is not used.",
        "- Handlers Clara built only on rank 0 run in the bundle's single process; checkpoints hold no `train_conf`.",
        '- `"device": "cuda"` and `amp` fall back to the CPU without CUDA, as clara-fl did.',
    ]
    if inference_from:
        lines += [
            "- The MMAR has no inference config: `configs/inference.json` was derived from the validation config",
            f"  `{inference_from}` (Clara users inferred with it): its network, pre-transforms, inferer and",
            "  post-transforms on the inference datalist (`INFER_DATALIST_KEY`, else `test`), with no metrics and no",
            "  label loading; its saver, or an added one, writes each prediction under `MMAR_EVAL_OUTPUT_PATH`",
            "  (`SaveImaged` masks as label maps, `ClassificationSaver` scores for a classification task).",
        ]
    if scripts:
        lines += ["- The MMAR's `custom/` code is in `scripts/`; components that use it put that folder on `sys.path`."]
    os.makedirs(os.path.join(staging, "docs"), exist_ok=True)
    with open(os.path.join(staging, "docs", "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
