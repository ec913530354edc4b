"""An inference config derived from a validation config, for MMARs that have no ``config_inference.json``.

Clara users validated and inferred with the validation config; a MONAI bundle is expected to have
``configs/inference.json``. The derived config is a Clara config (as written, placeholders kept) that keeps
the validation config's network entry, pre-transforms, dataset, inferer, post-transforms and handlers, and:

- drops the metrics (``metrics``, ``key_metric``, ``additional_metrics``, the evaluator's metric arguments)
  and the handlers that need them (``MetricsSaver``, ``CheckpointSaver`` ...);
- loads no label: the label keys (``label`` and whatever else the loader reads besides ``image``; an MSD
  ``test`` item holds only ``image``) leave the loader's ``keys``; other transforms naming them skip missing
  keys (``allow_missing_keys``), or lose them from ``keys`` when their class cannot; the engine's output
  holds ``label: None``, so the post-transforms start by deleting it (``DeleteItemsd``);
- reads the inference datalist (``{INFER_DATALIST_KEY}``, else MSD's ``test``);
- writes predictions: a saver of the validation config is enabled, else one is added (``SaveImaged`` masks
  to ``{MMAR_EVAL_OUTPUT_PATH}``, or ``ClassificationSaver`` for a classification ``PROCESSING_TASK``);
  ``AsDiscrete(d)`` keeps its ``argmax``/``threshold`` but not its one-hot encoding, so a mask is a label map.

The result goes through the same reading and translation as an MMAR's own inference config.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

from clara_fl.bundle.targets import resolve_target
from clara_fl.config.clara40 import is_clara40
from clara_fl.config.errors import ConfigError, json_path
from clara_fl.config.specs import ComponentSpec, class_name, is_component, parse_component

__all__ = ["derive_inference_config"]

IMAGE_KEY = "image"
LABEL_KEY = "label"
TEST_DATALIST_KEY = "test"
LOADERS = frozenset({"LoadImaged", "LoadImageD", "LoadImageDict"})
DISCRETIZERS = frozenset({"AsDiscrete", "AsDiscreted", "AsDiscreteD", "AsDiscreteDict"})
ONE_HOT_ARGS = ("to_onehot", "n_classes", "num_classes")
METRIC_ITEMS = ("metrics", "key_metric", "additional_metrics")
METRIC_ENGINE_ARGS = ("key_val_metric", "additional_metrics")
METRIC_HANDLERS = frozenset({"MetricsSaver", "MetricLogger", "CheckpointSaver", "EarlyStopHandler"})
TRANSFORM_SAVERS = frozenset({"SaveImage", "SaveImaged", "SaveImageD", "SaveImageDict"})
HANDLER_SAVERS = frozenset({"SegmentationSaver", "ClassificationSaver"})  # SegmentationSaver becomes SaveImaged


def _key_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _key_names(value: Any) -> set[str]:
    return {k for k in _key_list(value) if isinstance(k, str)}


def _accepts_missing_keys(spec: ComponentSpec, custom_modules: frozenset[str]) -> bool:
    try:
        parameters = inspect.signature(resolve_target(spec, custom_modules).callable).parameters
    except (ConfigError, TypeError, ValueError):
        return False
    return "allow_missing_keys" in parameters


def _label_keys(pre_transforms: list[Any]) -> set[str]:
    keys = {LABEL_KEY}
    for spec in pre_transforms:
        if is_component(spec) and class_name(spec) in LOADERS and isinstance(spec.get("args"), dict):
            keys |= {k for k in _key_list(spec["args"].get("keys")) if isinstance(k, str) and k != IMAGE_KEY}
    return keys


def _names_labels(spec: Any, labels: set[str]) -> bool:
    args = spec.get("args") if is_component(spec) else None
    return isinstance(args, dict) and bool(labels & _key_names(args.get("keys")))


def _without_labels(
    specs: list[Any], list_name: str, labels: set[str], custom_modules: frozenset[str], file: str
) -> list[Any]:
    """``specs`` with no transform that loads or needs a label; transforms left with no key are dropped."""
    kept = []
    for index, spec in enumerate(specs):
        try:
            parsed = parse_component(spec, json_path(list_name, index))
        except ConfigError as e:
            e.located(file)
            raise
        args = spec.get("args")
        if parsed is None or parsed.disabled or not isinstance(args, dict):
            kept.append(spec)
            continue
        path = json_path(list_name, index, "args")
        for name, value in args.items():
            if name != "keys" and name.endswith(("_key", "_keys")) and labels & _key_names(value):
                raise ConfigError(
                    f"{parsed.class_name} needs the label ({name} {value!r}), which inference data does not have; "
                    "give the MMAR a config/config_inference.json (or --inference-config)",
                    file=file,
                    path=json_path(path, name),
                )
        if list_name == "post_transforms" and parsed.class_name in DISCRETIZERS:
            for name in ONE_HOT_ARGS:
                args.pop(name, None)
        keys = _key_list(args.get("keys"))
        if not labels & _key_names(keys):
            kept.append(spec)
            continue
        if parsed.class_name not in LOADERS and _accepts_missing_keys(parsed, custom_modules):
            args["allow_missing_keys"] = True
            kept.append(spec)
            continue
        positions = [i for i, k in enumerate(keys) if not (isinstance(k, str) and k in labels)]
        if not positions:
            continue
        if isinstance(args.get("meta_keys"), list) and len(args["meta_keys"]) == len(keys):
            args["meta_keys"] = [args["meta_keys"][i] for i in positions]
        args["keys"] = [keys[i] for i in positions] if isinstance(args["keys"], list) else keys[positions[0]]
        kept.append(spec)
    return kept


def _enable_savers(specs: list[Any], savers: frozenset[str]) -> bool:
    """Enable every saver among ``specs`` (inference exists to write them); whether there was one."""
    found = False
    for spec in specs:
        if is_component(spec) and class_name(spec) in savers:
            spec.pop("disabled", None)
            found = True
    return found


def _added_saver(classification: bool) -> dict[str, Any]:
    if classification:
        return {
            "name": "ClassificationSaver",
            "args": {
                "output_dir": "{MMAR_EVAL_OUTPUT_PATH}",
                "batch_transform": "#monai.handlers.from_engine(['image_meta_dict'])",
                "output_transform": "#monai.handlers.from_engine(['pred'])",
            },
        }
    return {
        "name": "SaveImaged",
        "args": {"keys": "pred", "output_dir": "{MMAR_EVAL_OUTPUT_PATH}", "output_postfix": "seg", "resample": False},
    }


def derive_inference_config(
    validation: Mapping[str, Any], file: str, variables: Mapping[str, Any], custom_modules: frozenset[str]
) -> dict[str, Any]:
    """The inference config Clara users ran as their validation config: see the module docstring for each change.

    Args:
        validation: the validation config as written (placeholders kept); never changed.
        file: its name, for errors.
        variables: its variables' values (config globals, environment.json, ``--set``).
        custom_modules: top-level module names of the MMAR's ``custom/`` folder.

    Raises:
        ConfigError: a transform needs the label for something other than its ``keys`` (``source_key``, ...).
    """
    config = copy.deepcopy(dict(validation))
    explicit = not is_clara40(validation)  # a Clara 4.1 engine is given its lists by reference
    for name in METRIC_ITEMS:
        config.pop(name, None)
    pre = config.get("pre_transforms")
    labels = _label_keys(pre if isinstance(pre, list) else [])
    for list_name in ("pre_transforms", "post_transforms"):
        if isinstance(config.get(list_name), list):
            config[list_name] = _without_labels(config[list_name], list_name, labels, custom_modules, file)
    post = config.get("post_transforms")
    if isinstance(post, list) and any(_names_labels(spec, labels) for spec in post):
        post.insert(0, {"name": "DeleteItemsd", "args": {"keys": sorted(labels)}})
    handlers = config.get("handlers")
    if isinstance(handlers, list):
        config["handlers"] = [h for h in handlers if not (is_component(h) and class_name(h) in METRIC_HANDLERS)]
    evaluator = config.get("evaluator")
    engine_args = evaluator.get("args") if is_component(evaluator) else None
    if isinstance(engine_args, dict):
        for name in METRIC_ENGINE_ARGS:
            engine_args.pop(name, None)
    dataset = config.get("dataset")
    if is_component(dataset) and "data_list_file_path" in dataset:
        dataset["data_list_key"] = "{INFER_DATALIST_KEY}" if "INFER_DATALIST_KEY" in variables else TEST_DATALIST_KEY

    saved = _enable_savers(config.get("post_transforms") or [], TRANSFORM_SAVERS)
    saved = _enable_savers(config.get("handlers") or [], HANDLER_SAVERS) or saved
    if not saved:
        if "MMAR_EVAL_OUTPUT_PATH" not in variables:
            config["MMAR_EVAL_OUTPUT_PATH"] = "eval"
        classification = str(variables.get("PROCESSING_TASK", "")).lower().startswith("classification")
        list_name, engine_arg = (
            ("handlers", "val_handlers") if classification else ("post_transforms", "postprocessing")
        )
        if not isinstance(config.get(list_name), list):
            config[list_name] = []
            if explicit and isinstance(engine_args, dict):
                engine_args.setdefault(engine_arg, f"@{list_name}")
        config[list_name].append(_added_saver(classification))
    return config
