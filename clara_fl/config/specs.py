"""Component specs in a config: what counts as one, what it says, and the sections and keys it sits in.

Clara 4.x names a component by ``name`` (a class name, ``"UNet"``) or ``path`` (a dotted path,
``"my_module.MyNet"``), either with an optional ``#alias`` that a validate ``ref`` may name; ``args`` holds
its keyword arguments, ``disabled`` switches it off, ``rank`` keeps it to one process of a multi-GPU run.
A validation or inference config's ``model`` may instead be model file entries (``{"ckpt_path": ...}``,
``{"ts_path": ...}``) and network definitions, the first enabled one winning.

Every part of the config engine that looks for components (the resolver, the bundle translator, the Clara 4.0
translation and its detection, ``clara-fl convert``) asks here, so a component is the same thing at every
depth: a section item, an item of a list, an argument of another component, an item of a list in an argument.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from clara_fl.config.errors import ConfigError, did_you_mean
from clara_fl.config.errors import json_path as join_path
from clara_fl.config.variables import PLACEHOLDER, as_bool

__all__ = [
    "COMPONENT_KEYS",
    "DATASET_KEYS",
    "HANDLER_KEYS",
    "MODEL_FILE_KEYS",
    "SECTION_NAMES",
    "TRANSFORM_KEYS",
    "TRANSFORM_LISTS",
    "ComponentSpec",
    "check_component_keys",
    "class_name",
    "component_label",
    "config_sections",
    "find_ref",
    "is_component",
    "is_component_list",
    "is_disabled",
    "is_file_entry",
    "is_model_entry",
    "parse_component",
    "position_key",
    "rank_of",
]

# The sections of a train config; a validation or inference config is one flat section.
SECTION_NAMES = ("train", "validate")
# A section's lists of transforms (the ones a validate ``ref`` looks in).
TRANSFORM_LISTS = ("pre_transforms", "post_transforms")
# Keys whose component, or whose list's items, are transforms: the sections' lists and the arguments MONAI
# takes transforms in (Compose/OneOf/deepgrow Interaction ``transforms``, a dataset's ``transform``, an engine's
# ``postprocessing``).
TRANSFORM_KEYS = frozenset({*TRANSFORM_LISTS, "transforms", "transform", "postprocessing"})
# Keys whose list's items are event handlers: the sections' list and the engines' arguments.
HANDLER_KEYS = frozenset({"handlers", "train_handlers", "val_handlers"})
# A dataset component's datalist keys (Clara reads the datalist and passes it as ``data``).
DATASET_KEYS = ("data_list_file_path", "data_file_base_dir", "data_list_key")
# The keys a component spec may have.
COMPONENT_KEYS = frozenset({"name", "path", "args", "disabled", "rank", "log_label", "ref", *DATASET_KEYS})
# A ``model`` file entry's file keys, and all the keys it may have.
MODEL_FILE_KEYS = ("ts_path", "ckpt_path")
_FILE_ENTRY_KEYS = frozenset({*MODEL_FILE_KEYS, "disabled"})
# Keys whose value may still be a whole ``{variable}`` in a config read before its variables are substituted.
_DEFERRABLE_KEYS = ("args", "disabled", "rank")

_TRAILING_INDEXES = re.compile(r"(\[\d+\])+$")


@dataclass(frozen=True)
class ComponentSpec:
    """One component as a config writes it: ``{"name": "UNet#net", "args": {...}, "disabled": ..., "rank": 0}``.

    Attributes:
        json_path: where it sits in its config (``train.pre_transforms[2]``).
        name: the class name as written, without its alias (``"UNet"``); None when the spec gives ``path``.
        path: the dotted path as written, without its alias (``"monai.networks.nets.UNet"``); None with ``name``.
        alias: the text after ``#`` (``"net"``), which a validate ``ref`` may name; None without one.
        args: its keyword arguments as written (components inside them are left as written).
        disabled: Clara's ``disabled``: ``true``/``false`` or a boolean word (``"yes"``, ``"False"``); False when
            absent.
        rank: Clara's ``rank``: the one process of a multi-GPU run that uses the component; None: every process.
        placeholders: the keys (``args``, ``disabled``, ``rank``) whose value is still a whole ``{variable}``, in a
            config read before its variables are substituted; their field then holds its default.
    """

    json_path: str
    name: str | None
    path: str | None
    alias: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    disabled: bool = False
    rank: int | None = None
    placeholders: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The key that names the class: ``"path"`` or ``"name"``."""
        return "path" if self.path is not None else "name"

    @property
    def target(self) -> str:
        """What names the class, without alias: the dotted path, else the class name."""
        return self.path if self.path is not None else self.name or ""

    @property
    def class_name(self) -> str:
        """The class, without module or alias: ``"UNet"`` for ``"monai.networks.nets.UNet#net"``."""
        return self.target.rsplit(".", 1)[-1]


def is_component(value: Any) -> TypeGuard[dict[str, Any]]:
    """Whether ``value`` is a component spec: an object naming its class by ``name`` or ``path``."""
    return isinstance(value, dict) and ("name" in value or "path" in value)


def is_component_list(value: Any) -> TypeGuard[list[dict[str, Any]]]:
    """Whether ``value`` is a non-empty list of component specs (a list of components in an argument)."""
    return isinstance(value, list) and bool(value) and all(is_component(item) for item in value)


def _written(spec: Mapping[str, Any]) -> str:
    """What names the class, as written: ``path`` wins over ``name`` (Clara 4.0 took both, the path naming it)."""
    return str(spec.get("path") or spec.get("name") or "")


def class_name(spec: Mapping[str, Any]) -> str:
    """The class a spec names, without module or alias: ``"Foo"`` for ``"my.mod.Foo#alias"``.

    Works on a spec as written, malformed or not (``""`` when it names nothing); :func:`parse_component` checks it.
    """
    return _written(spec).partition("#")[0].rsplit(".", 1)[-1]


def component_label(spec: Mapping[str, Any]) -> str:
    """A metric's log label: ``log_label``, else its class name."""
    return str(spec.get("log_label") or class_name(spec) or "metric")


def is_disabled(item: Mapping[str, Any], json_path: str) -> bool:
    """Clara's ``disabled`` of a component, a model file entry or a ``ref`` item (False when absent).

    Raises:
        ConfigError: it is neither a boolean nor a boolean word, at ``<json_path>.disabled``.
    """
    value = item.get("disabled", False)
    flag = as_bool(value)
    if flag is None:
        raise ConfigError(f"'disabled' must be true or false, got {value!r}", path=join_path(json_path, "disabled"))
    return flag


def rank_of(item: Mapping[str, Any], json_path: str) -> int | None:
    """Clara's ``rank`` of a component or a ``ref`` item: the process that uses it; None (every process) when absent.

    Raises:
        ConfigError: it is not an integer, at ``<json_path>.rank``.
    """
    rank = item.get("rank")
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ConfigError(f"'rank' must be an integer, got {rank!r}", path=join_path(json_path, "rank"))
    return rank


def parse_component(value: Any, json_path: str) -> ComponentSpec | None:
    """The component spec ``value`` is, or None when it is not one (no ``name`` or ``path``).

    Keys other than the grammar's are not looked at here (a Clara 4.0 metric's ``is_key_metric``, ...): a
    consumer that builds the component checks them with :func:`check_component_keys`.

    Args:
        value: a config item, as written or with its variables substituted.
        json_path: where it sits, for errors and for :attr:`ComponentSpec.json_path`.

    Raises:
        ConfigError: a malformed spec, at the JSON path of the key at fault: both ``name`` and ``path``, a name or
            path that is not a string naming a class, ``args`` that is not an object, ``disabled`` that is not a
            boolean, ``rank`` that is not an integer.
    """
    if not is_component(value):
        return None
    if "name" in value and "path" in value:
        raise ConfigError("give either 'name' or 'path', not both", path=json_path)
    key = "path" if "path" in value else "name"
    written = value[key]
    if not isinstance(written, str) or not written:
        raise ConfigError(f"'{key}' must be a class name string, got {_short(written)}", path=join_path(json_path, key))
    target, _, alias = written.partition("#")
    if not target:
        raise ConfigError(f"'{key}' names no class before its '#alias': {written!r}", path=join_path(json_path, key))
    placeholders = {
        k: value[k] for k in _DEFERRABLE_KEYS if isinstance(value.get(k), str) and PLACEHOLDER.fullmatch(value[k])
    }
    args = {} if "args" in placeholders else value.get("args", {})
    if not isinstance(args, dict):
        raise ConfigError(
            f"'args' must be an object of keyword arguments, got {type(args).__name__}",
            path=join_path(json_path, "args"),
        )
    return ComponentSpec(
        json_path=json_path,
        name=target if key == "name" else None,
        path=target if key == "path" else None,
        alias=alias or None,
        args=args,
        disabled=False if "disabled" in placeholders else is_disabled(value, json_path),
        rank=None if "rank" in placeholders else rank_of(value, json_path),
        placeholders=placeholders,
    )


def check_component_keys(value: Mapping[str, Any]) -> None:
    """Refuse a key a component spec cannot have (a misspelt ``args``), for the consumers that build components.

    Raises:
        ConfigError: the first unexpected key, with the closest known one.
    """
    unknown = set(value) - COMPONENT_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"unexpected key '{key}' in a component{did_you_mean(key, COMPONENT_KEYS)}")


def is_file_entry(value: Any) -> bool:
    """Whether ``value`` is a ``model`` file entry: ``{"ckpt_path": ...}`` or ``{"ts_path": ...}``, maybe disabled."""
    return isinstance(value, dict) and value.keys() <= _FILE_ENTRY_KEYS and any(k in value for k in MODEL_FILE_KEYS)


def is_model_entry(value: Any) -> bool:
    """Whether a ``model`` item is model file entries rather than one network component: a file entry, or a list
    of file entries and network definitions (Clara 4.0 mixed them), in any order, with at least one file entry.

    Its first enabled entry is the model: a file is loaded, a network definition built (its weights then come from
    a CheckpointLoader handler).
    """
    entries = value if isinstance(value, list) else [value]
    return any(is_file_entry(e) for e in entries) and all(is_file_entry(e) or is_component(e) for e in entries)


def config_sections(
    config: Mapping[str, Any], skip: Collection[str] = (), top_level: bool = True
) -> dict[str, Mapping[str, Any]]:
    """A config's sections, keyed by the JSON path prefix of their items.

    A train config (one with a ``train`` object) has ``"train"``, ``"validate"`` when it has one and, with
    ``top_level``, ``""``: its other top-level objects not in ``skip`` (when there are any). A validation or
    inference config is one section ``""``: its top-level items not in ``skip``.

    A section is the config's own object (a caller may change it in place), except a train config's ``""`` and a
    flat config's section with ``skip``: those are new objects holding the config's items.

    Args:
        config: the config.
        skip: top-level keys that hold no components (variables, ``determinism``, ``network_summary``).
        top_level: whether a train config's other top-level objects form a section.
    """
    if not isinstance(config.get("train"), Mapping):
        return {"": {k: v for k, v in config.items() if k not in skip} if skip else config}
    found: dict[str, Mapping[str, Any]] = {"train": config["train"]}
    if isinstance(config.get("validate"), Mapping):
        found["validate"] = config["validate"]
    others = {k: v for k, v in config.items() if k not in SECTION_NAMES and k not in skip and isinstance(v, Mapping)}
    if top_level and others:
        found[""] = others
    return found


def find_ref(ref: str, train: Mapping[str, Any]) -> tuple[str, int]:
    """Where the train transform that a validate ``ref`` names sits: (list name, index) of the one whose alias is
    ``ref``, else of the first whose class name is.

    Raises:
        ConfigError: no train transform has that alias or class name (with the closest one), or a train
            transform is malformed.
    """
    candidates: list[tuple[tuple[str, int], ComponentSpec]] = []
    for list_name in TRANSFORM_LISTS:
        items = train.get(list_name)
        for index, item in enumerate(items if isinstance(items, list) else []):
            spec = parse_component(item, join_path("train", list_name, index))
            if spec is not None:
                candidates.append(((list_name, index), spec))
    by_alias = (where for where, spec in candidates if spec.alias == ref)
    by_class = (where for where, spec in candidates if spec.class_name == ref)
    found = next(by_alias, None) or next(by_class, None)
    if found is not None:
        return found
    known = [s.alias for _, s in candidates if s.alias] + [s.class_name for _, s in candidates]
    raise ConfigError(
        f"ref '{ref}' matches no transform name or alias in train.pre_transforms or train.post_transforms"
        f"{did_you_mean(ref, known)}"
    )


def position_key(path: str) -> str:
    """The key a component sits under, from its JSON path: ``"transforms"`` for
    ``train.pre_transforms[2].args.transforms[0]``, ``"loss"`` for ``train.loss``."""
    return _TRAILING_INDEXES.sub("", path).rpartition(".")[2]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
