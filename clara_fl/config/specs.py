"""Component specs in a config: what counts as one, the class it names, and the kind of place it sits in.

Every part of the config engine that looks for components (the resolver, the Clara 4.0 translation, its
detection, ``clara-fl convert``) asks here, so a component is the same thing at every depth: a section
item, an item of a list, an argument of another component, an item of a list in an argument.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeGuard

__all__ = [
    "HANDLER_KEYS",
    "TRANSFORM_KEYS",
    "class_name",
    "is_component",
    "is_component_list",
    "position_key",
]

# Keys whose component, or whose list's items, are transforms: the sections' lists and the arguments MONAI
# takes transforms in (Compose/OneOf/deepgrow Interaction ``transforms``, a dataset's ``transform``, an engine's
# ``postprocessing``).
TRANSFORM_KEYS = frozenset({"pre_transforms", "post_transforms", "transforms", "transform", "postprocessing"})
# Keys whose list's items are event handlers: the sections' list and the engines' arguments.
HANDLER_KEYS = frozenset({"handlers", "train_handlers", "val_handlers"})

_TRAILING_INDEXES = re.compile(r"(\[\d+\])+$")


def is_component(value: Any) -> TypeGuard[dict[str, Any]]:
    """Whether ``value`` is a component spec: an object naming its class by ``name`` or ``path``."""
    return isinstance(value, dict) and ("name" in value or "path" in value)


def is_component_list(value: Any) -> TypeGuard[list[dict[str, Any]]]:
    """Whether ``value`` is a non-empty list of component specs (a list of components in an argument)."""
    return isinstance(value, list) and bool(value) and all(is_component(item) for item in value)


def class_name(spec: Mapping[str, Any]) -> str:
    """The class a spec names, without module or alias: ``"Foo"`` for ``"my.mod.Foo#alias"``."""
    return str(spec.get("name") or spec.get("path") or "").split("#")[0].rsplit(".", 1)[-1]


def position_key(path: str) -> str:
    """The key a component sits under, from its JSON path: ``"transforms"`` for
    ``train.pre_transforms[2].args.transforms[0]``, ``"loss"`` for ``train.loss``."""
    return _TRAILING_INDEXES.sub("", path).rpartition(".")[2]
