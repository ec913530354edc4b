"""A Clara 4.1 config (component tree) as a MONAI bundle config (JSON), without building anything.

Layout (MONAI's train/evaluate/inference conventions, so ``monai.bundle`` commands and
``monai.fl.client.MonaiAlgo`` find what they look for):

- root: ``imports``, ``bundle_root``, ``device``, the config's variables (:mod:`clara_fl.bundle.variables`),
  ``network_def``/``network`` (the train config's ``model``), ``loss``, ``optimizer``, ``lr_scheduler``,
  ``initialize`` (Clara's ``determinism``), ``run``;
- ``train#...`` and ``validate#...``: the train config's sections; ``pre_transforms``/``post_transforms``
  lists plus their ``preprocessing``/``postprocessing`` Compose (what Clara's ``@pre_transforms`` meant);
- evaluate.json puts a validation config under ``validate#`` (so it also overrides train.json, as
  MonaiAlgo merges them); inference.json puts an inference config at the root.

Clara semantics carried over: ``@name`` looks in the current section first, then the others; a
``ref`` transform is the same instance as the train transform it names; ``"device": "cuda"`` and
``amp`` fall back to CPU without CUDA; ``rank`` is dropped (a bundle runs as one process);
``"train_conf": "@conf"`` entries of checkpoint dicts are dropped (bundle checkpoints hold weights).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clara_fl.bundle.syntax import bundle_id, literal, python_literal
from clara_fl.bundle.targets import IMAGE_META_BATCH_TRANSFORM, Target, resolve_target
from clara_fl.bundle.variables import BundleVariables
from clara_fl.config import compat
from clara_fl.config.errors import ConfigError, did_you_mean, json_path
from clara_fl.config.specs import (
    DATASET_KEYS,
    TRANSFORM_LISTS,
    ComponentSpec,
    check_component_keys,
    component_label,
    config_sections,
    find_ref,
    is_component,
    is_model_entry,
    parse_component,
)
from clara_fl.config.variables import PLACEHOLDER, config_globals, is_code

__all__ = ["ClaraConfig", "translate_train", "translate_evaluate", "translate_inference", "RESERVED_IDS"]

# train-section items that MONAI bundles keep at the root.
ROOT_ITEMS = {"model": "network", "loss": "loss", "optimizer": "optimizer", "lr_scheduler": "lr_scheduler"}
# A section's transform lists -> the id of their Compose (what Clara's ``@pre_transforms`` meant).
COMPOSE_IDS = dict(zip(TRANSFORM_LISTS, ("preprocessing", "postprocessing"), strict=True))
SKIPPED_ROOT_ITEMS = ("network_summary", "determinism")  # metadata and initialize carry these
IMPORTS = [
    "$import os",
    "$import sys",
    "$import torch",
    "$import numpy",
    "$import numpy as np",
    "$import monai",
    "$import ignite",
]
DEVICE = "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')"
RESERVED_IDS = frozenset(
    {
        "imports",
        "bundle_root",
        "device",
        "network_def",
        "network",
        "loss",
        "optimizer",
        "lr_scheduler",
        "train",
        "validate",
        "initialize",
        "run",
        "finalize",
        "scripts_dir",
        "MMAR_ROOT",
    }
)
_REFERENCE = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)")
_META_FROM_ENGINE = re.compile(r"(?:monai\.handlers\.)?from_engine\(\s*\[\s*['\"](\w+)_meta_dict['\"]\s*\]\s*\)")


@dataclass(frozen=True)
class ClaraConfig:
    """One Clara config as written, with its variables and where it came from.

    ``content`` is the JSON as written (placeholders kept), ``variables`` its merged variable table,
    ``file`` the name errors use, ``custom_modules`` the top-level modules of the MMAR's custom/ folder.
    """

    content: Mapping[str, Any]
    variables: BundleVariables
    file: str
    custom_modules: frozenset[str] = frozenset()
    resolved_variables: Mapping[str, Any] | None = None  # Clara's filled-in values, for {X} inside code


def _is_engine(target: Callable[..., Any]) -> bool:
    return inspect.isclass(target) and any(
        base.__module__.startswith("monai.engines") and base.__name__ == "Workflow" for base in target.__mro__
    )


def _set_nested(tree: dict[str, Any], item_id: str, value: Any) -> None:
    *parents, last = item_id.split("#")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


class _Translator:
    """Translates the components of one config; ``sections`` maps a Clara section to its bundle prefix."""

    def __init__(
        self, source: ClaraConfig, sections: Mapping[str, Mapping[str, Any]], prefixes: Mapping[str, str]
    ) -> None:
        self.source = source
        self.sections = sections
        self.prefixes = prefixes
        self.items: dict[str, Any] = {}

    # -- ids and references ------------------------------------------------------------------------

    def item_id(self, section: str, name: str) -> str:
        if name == "model":
            return "network"
        if section == "train" and name in ROOT_ITEMS:
            return ROOT_ITEMS[name]
        return bundle_id(self.prefixes[section], COMPOSE_IDS.get(name, name))

    def owner(self, name: str, section: str) -> str:
        if name in self.sections.get(section, {}):
            return section
        for other, content in self.sections.items():
            if name in content:
                return other
        known = sorted({k for content in self.sections.values() for k in content})
        raise ConfigError(f"unknown reference '@{name}'{did_you_mean(name, known, prefix='@')}")

    def reference(self, name: str, section: str, path: str) -> str:
        if name == "conf":
            raise ConfigError("'@conf' (the whole Clara config as an object) has no bundle equivalent", path=path)
        if name in self.source.variables and not any(name in content for content in self.sections.values()):
            return self.source.variables.ref_id(name)
        return self.item_id(self.owner(name, section), name)

    # -- values --------------------------------------------------------------------------------------

    def value(self, value: Any, path: str, section: str) -> Any:
        try:
            if isinstance(value, str):
                return self.string(value, path, section)
            if isinstance(value, list):
                return [self.value(v, json_path(path, i), section) for i, v in enumerate(value)]
            if isinstance(value, dict):
                if "ref" in value:
                    return self.transform_ref(value, path, section)
                if is_component(value):
                    return self.component(value, path, section)
                return self.plain_dict(value, path, section)
            return value
        except ConfigError as e:
            e.located(self.source.file, path)
            raise

    def plain_dict(self, value: Mapping[str, Any], path: str, section: str) -> dict[str, Any]:
        out = {}
        for key, item in value.items():
            if "#" in str(key):
                raise ConfigError(
                    f"key '{key}' contains '#', which MONAI's ConfigParser reads as an id separator",
                    path=json_path(path, key),
                )
            if item == "@conf":
                continue  # Clara saved the config beside the weights ("train_conf"); bundle checkpoints hold weights
            out[key] = self.value(item, json_path(path, key), section)
        return out

    def string(self, value: str, path: str, section: str) -> Any:
        if value.startswith("@") and value[1:].isidentifier():
            return "@" + self.reference(value[1:], section, path)
        if is_code(value):
            return self.code(value, path, section)
        if PLACEHOLDER.search(value):
            return self.source.variables.text(value, path)
        return literal(value)

    def code(self, value: str, path: str, section: str) -> str:
        source = value[1:] if value.startswith("#") else value
        if self.source.resolved_variables is not None and "{" in source:
            source = _fill_known(source, self.source.resolved_variables)
        source = source.strip()
        meta = _META_FROM_ENGINE.fullmatch(source)
        if meta:
            return f"$lambda x: [xx[{meta.group(1)!r}].meta for xx in x]"
        if "_meta_dict" in source:
            raise ConfigError(
                f"'{value}' reads '*_meta_dict' keys, which MONAI 1.6 no longer has (metadata lives on MetaTensors)"
            )
        if "#" in source:
            raise ConfigError(f"'{value}' contains '#', which MONAI's ConfigParser turns into '::' in every string")
        return "$" + _REFERENCE.sub(lambda m: "@" + self.reference(m.group(1), section, path), source)

    # -- components ----------------------------------------------------------------------------------

    def component(self, written: Mapping[str, Any], path: str, section: str) -> dict[str, Any]:
        spec = parse_component(written, path)
        if spec is None:
            raise ConfigError("a component needs 'name' or 'path'", path=path)
        check_component_keys(written)
        if "args" in spec.placeholders:
            raise ConfigError(
                "'args' must be an object of keyword arguments, got a variable", path=json_path(path, "args")
            )
        try:
            target = resolve_target(spec, self.source.custom_modules)
        except ConfigError as e:
            e.located(self.source.file, json_path(path, spec.key))
            raise
        raw_args = dict(spec.args)
        args = compat.translate_args(target.short_name, target.callable, raw_args)
        out: dict[str, Any] = {"_target_": target.dotted}
        if target.byoc:
            out["_requires_"] = "$sys.path.insert(0, @scripts_dir) if @scripts_dir not in sys.path else None"
        if "disabled" in written:
            out["_disabled_"] = self.disabled(spec, json_path(path, "disabled"))
        for key, default in self.defaults(target, raw_args).items():
            out[key] = default
        for key, arg in args.items():
            out[key] = self.argument(target, key, arg, json_path(path, "args", key), section)
        if any(k in written for k in DATASET_KEYS):
            out["data"] = self.datalist(written, path)
        if _is_engine(target.callable):
            out.setdefault("device", "@device")
            if "amp" in out:
                out["amp"] = _amp_if_cuda(out["amp"])
        return out

    def defaults(self, target: Target, raw_args: Mapping[str, Any]) -> dict[str, Any]:
        defaults = dict(target.defaults)
        if target.short_name == "CheckpointSaver" and int(raw_args.get("key_metric_n_saved", 1)) > 1:
            defaults.pop("key_metric_filename", None)  # several best models need distinct names
        return {k: v for k, v in defaults.items() if k not in raw_args}

    def argument(self, target: Target, key: str, value: Any, path: str, section: str) -> Any:
        if key == "device" and isinstance(value, str) and value.startswith("cuda"):
            return "@device"  # Clara ran GPU configs on the machine's device
        if key == "batch_transform" and target.dotted == "monai.handlers.MetricsSaver" and value is None:
            return IMAGE_META_BATCH_TRANSFORM
        return self.value(value, path, section)

    def disabled(self, spec: ComponentSpec, path: str) -> Any:
        variable = spec.placeholders.get("disabled")
        if variable is not None:
            # Clara's boolean words (yes/on/True); MONAI's _disabled_ alone would take only true/"true".
            reference = self.source.variables.text(variable, path)
            return f"$str({reference}).strip().lower() in ('true', 'yes', 'on')"
        return spec.disabled

    def datalist(self, spec: Mapping[str, Any], path: str) -> str:
        if "data_list_file_path" not in spec:
            raise ConfigError("'data_list_file_path' is required with the other data_list keys", path=path)

        def expression(key: str, default: str | None) -> str:
            value = spec.get(key, default)
            if value is None:
                return "None"
            if not isinstance(value, str):
                raise ConfigError(f"'{key}' must be a string, got {value!r}", path=json_path(path, key))
            translated = self.source.variables.text(value, json_path(path, key)) if PLACEHOLDER.search(value) else None
            if translated is None:
                return python_literal(value)
            return translated[1:] if translated.startswith("$") else translated

        list_file = expression("data_list_file_path", None)
        key = expression("data_list_key", "training")
        base_dir = expression("data_file_base_dir", None)
        return f"$monai.data.load_decathlon_datalist({list_file}, True, {key}, {base_dir})"

    def transform_ref(self, value: Mapping[str, Any], path: str, section: str) -> str:
        ref = value["ref"]
        if not isinstance(ref, str) or not ref:
            raise ConfigError(
                f"'ref' must name a train transform by class name or alias, got {ref!r}", path=json_path(path, "ref")
            )
        extra = set(value) - {"ref", "disabled", "rank"}
        if extra:
            raise ConfigError(f"a 'ref' item takes no other keys, found {sorted(extra)}")
        train = self.sections.get("train")
        if train is None or section == "train":
            raise ConfigError(
                f"'ref' re-uses a transform of the train section, which this config does not have (ref '{ref}')"
            )
        list_name, index = find_ref(ref, train)
        return "@" + bundle_id(self.prefixes["train"], list_name, str(index))

    # -- sections --------------------------------------------------------------------------------------

    def section_item(self, section: str, name: str, value: Any) -> None:
        path = json_path(section, name)
        item_id = self.item_id(section, name)
        if name == "model" and is_model_entry(value):
            return  # the network comes from the train config; its weights from models/model.pt
        if name in ("key_metric", "additional_metrics"):
            self.items[item_id] = self.metrics(value, path, section)
        elif name in COMPOSE_IDS and isinstance(value, list):
            list_id = bundle_id(self.prefixes[section], name)
            self.items[list_id] = self.value(value, path, section)
            self.items[item_id] = {"_target_": "monai.transforms.Compose", "transforms": "@" + list_id}
        elif name == "model":
            self.items["network_def"] = self.value(value, path, section)
            self.items["network"] = "$@network_def.to(@device)"
        else:
            self.items[item_id] = self.value(value, path, section)

    def metrics(self, value: Any, path: str, section: str) -> dict[str, Any]:
        specs = value if isinstance(value, list) else [value]
        metrics = {}
        for index, spec in enumerate(specs):
            spec_path = json_path(path, index) if isinstance(value, list) else path
            if not is_component(spec):
                raise ConfigError(
                    "a metric must be a component with 'name' or 'path'", file=self.source.file, path=spec_path
                )
            metrics[component_label(spec)] = self.value(spec, spec_path, section)
        return metrics

    def translate(self) -> dict[str, Any]:
        for section, content in self.sections.items():
            for name, value in content.items():
                self.section_item(section, name, value)
        return self.items


def _fill_known(code: str, values: Mapping[str, Any]) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            return match.group(0)  # code keeps braces that are not variables (dict and set literals)
        value = values[name]
        return json.dumps(value) if isinstance(value, (list, dict)) else str(value)

    return PLACEHOLDER.sub(replace, code)


def _amp_if_cuda(value: Any) -> Any:
    """Clara turned AMP off where there is no CUDA device; a bundle decides when it runs."""
    if value is False:
        return False
    if value is True:
        return "$torch.cuda.is_available()"
    if isinstance(value, str) and value.startswith("@"):
        return f"${value} and torch.cuda.is_available()"
    if isinstance(value, str) and value.startswith("$"):
        return f"$({value[1:]}) and torch.cuda.is_available()"
    return value


def _flat_sections(content: Mapping[str, Any]) -> dict[str, Any]:
    """A validation/inference config's components (variables are not components)."""
    return dict(config_sections(content, skip={*config_globals(content), *SKIPPED_ROOT_ITEMS})[""])


def _base(source: ClaraConfig, run: list[str], reserved: set[str]) -> dict[str, Any]:
    variables = source.variables.values
    base: dict[str, Any] = {
        "imports": list(IMPORTS),
        "bundle_root": ".",
        "scripts_dir": "$os.path.join(@bundle_root, 'scripts')",
        "device": DEVICE,
    }
    base.update(source.variables.items(set(RESERVED_IDS) | reserved))
    initialize = []
    determinism = variables.get("determinism")
    if isinstance(determinism, dict) and determinism.get("random_seed") is not None:
        initialize.append("$monai.utils.set_determinism(seed=@determinism#random_seed)")
    if variables.get("cudnn_benchmark") is not None:
        initialize.append("$setattr(torch.backends.cudnn, 'benchmark', bool(@cudnn_benchmark))")
    # Clara builds the model before any data loader, and monai.data.DataLoader seeds its dataset's
    # transforms from the global torch generator: the network must draw its weights first here too.
    initialize.append("$@network")
    base.update({"initialize": initialize, "run": run, "finalize": []})
    return base


def _network_items(train: ClaraConfig) -> dict[str, Any]:
    """``network_def`` and ``network`` from a train config (validation and inference configs name no network)."""
    section = train.content.get("train")
    if not isinstance(section, dict) or not is_component(section.get("model")):
        raise ConfigError(
            "the train config has no 'train.model' component to take the network from",
            file=train.file,
            path="train.model",
        )
    translator = _Translator(train, {"train": section}, {"train": "train"})
    translator.section_item("train", "model", section["model"])
    return {"network_def": translator.items["network_def"], "network": translator.items["network"]}


def _assemble(base: dict[str, Any], items: Mapping[str, Any]) -> dict[str, Any]:
    bundle = dict(base)
    run, initialize, finalize = bundle.pop("run"), bundle.pop("initialize"), bundle.pop("finalize")
    for item_id, value in items.items():
        _set_nested(bundle, item_id, value)
    bundle.update({"initialize": initialize, "run": run, "finalize": finalize})
    return bundle


def translate_train(train: ClaraConfig) -> dict[str, Any]:
    """A Clara train config (``train`` and ``validate`` sections) as a bundle ``train.json``.

    Raises:
        ConfigError: a construct with no bundle equivalent, named with its file and JSON path.
    """
    content = train.content
    if not isinstance(content.get("train"), dict):
        raise ConfigError("a train config needs a 'train' section", file=train.file, path="train")
    sections = config_sections(content, skip=SKIPPED_ROOT_ITEMS)
    extras = sections.get("", {})
    clash = sorted(set(extras) & RESERVED_IDS)
    if clash:
        raise ConfigError(f"'{clash[0]}' is the name of an item every bundle defines", file=train.file, path=clash[0])
    for required in ("model", "trainer"):
        if not is_component(content["train"].get(required)):
            where = f"train.{required}"
            raise ConfigError(f"the train config has no '{where}' component", file=train.file, path=where)
    prefixes = {"train": "train", "validate": "validate", "": ""}
    items = _Translator(train, sections, prefixes).translate()
    return _assemble(_base(train, ["$@train#trainer.run()"], set(extras)), items)


def translate_evaluate(validation: ClaraConfig, train: ClaraConfig) -> dict[str, Any]:
    """A Clara validation config as a bundle ``evaluate.json``: its items under ``validate#``, the network
    from the train config, weights loaded from ``models/model.pt`` by a CheckpointLoader.

    Raises:
        ConfigError: a construct with no bundle equivalent, named with its file and JSON path.
    """
    return _translate_flat(validation, train, prefix="validate", run="$@validate#evaluator.run()")


def translate_inference(inference: ClaraConfig, train: ClaraConfig) -> dict[str, Any]:
    """A Clara inference config as a bundle ``inference.json`` (items at the root, MONAI's inference layout).

    Raises:
        ConfigError: a construct with no bundle equivalent, named with its file and JSON path.
    """
    return _translate_flat(inference, train, prefix="", run="$@evaluator.run()")


def _translate_flat(source: ClaraConfig, train: ClaraConfig, prefix: str, run: str) -> dict[str, Any]:
    content = _flat_sections(source.content)
    if not is_component(content.get("evaluator")):
        raise ConfigError("the config has no 'evaluator' component", file=source.file, path="evaluator")
    translator = _Translator(source, {prefix: content}, {prefix: prefix})
    items = translator.translate()
    items.update(_network_items(train))
    if is_model_entry(content.get("model")):
        _load_weights_first(items, prefix, source)
    reserved = set(content) if not prefix else set()
    return _assemble(_base(source, [run], reserved), items)


def _load_weights_first(items: dict[str, Any], prefix: str, source: ClaraConfig) -> None:
    """Clara's ``model`` entries loaded a checkpoint or TorchScript file; the bundle loads ``models/model.pt``."""
    loader = {
        "_target_": "monai.handlers.CheckpointLoader",
        "load_path": "$os.path.join(@bundle_root, 'models', 'model.pt')",
        "load_dict": {"model": "@network"},
        "map_location": "@device",
    }
    handlers_id = bundle_id(prefix, "handlers")
    evaluator = items[bundle_id(prefix, "evaluator")]
    if handlers_id in items:
        if not isinstance(items[handlers_id], list):
            raise ConfigError("'handlers' must be a list", file=source.file, path="handlers")
        items[handlers_id] = [loader, *items[handlers_id]]
    else:
        items[handlers_id] = [loader]
    if "val_handlers" not in evaluator:
        evaluator["val_handlers"] = "@" + handlers_id
