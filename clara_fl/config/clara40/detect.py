"""Telling a Clara 4.0 config (implicit wiring) from a Clara 4.1 one (explicit ``@`` references).

The rule: a config is Clara 4.0 when it refers to no component anywhere (no ``"@name"`` value and no
``@name`` inside a ``#`` expression or lambda) and has a ``trainer`` or ``evaluator`` component or a
``metrics`` list. A 4.1 config cannot wire its trainer or evaluator without ``@`` references, so it is
never taken for 4.0 and never rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from clara_fl.config.specs import config_sections, is_component

__all__ = ["is_clara40", "clara40_markers", "sections_of", "needs_compat_layer"]

LEGACY_TRANSFORM_CLASS = "clara_fl.components.legacy_transform.LegacyTransform"
LEGACY_HANDLER_CLASS = "clara_fl.components.legacy_handler.LegacyHandler"

_REFERENCE = re.compile(r"@[A-Za-z_]\w*")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _refers_to_components(config: Mapping[str, Any]) -> bool:
    for text in _strings(config):
        stripped = text.lstrip()
        if stripped.startswith("@") or (
            (stripped.startswith("#") or stripped.startswith("lambda")) and _REFERENCE.search(text)
        ):
            return True
    return False


def sections_of(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The sections Clara 4.0 wired: ``{"train": ..., "validate": ...}`` of a train config, ``{"": config}`` of a
    flat one (:func:`clara_fl.config.specs.config_sections` without a train config's other top-level objects)."""
    return config_sections(config, top_level=False)


def clara40_markers(config: Mapping[str, Any]) -> list[str]:
    """JSON paths of constructs only Clara 4.0 wrote: a ``metrics`` list, an engine given none of its components."""
    found = []
    for prefix, section in sections_of(config).items():
        if isinstance(section.get("metrics"), list):
            found.append(f"{prefix}.metrics" if prefix else "metrics")
        for key, network_arg in (("trainer", "network"), ("evaluator", "network")):
            engine = section.get(key)
            args = engine.get("args") if is_component(engine) else None
            if is_component(engine) and not (isinstance(args, Mapping) and network_arg in args):
                found.append(f"{prefix}.{key}" if prefix else key)
    return found


def is_clara40(config: Mapping[str, Any]) -> bool:
    """Whether ``config`` is written in Clara 4.0's implicit style (see the module docstring for the rule)."""
    if _refers_to_components(config):
        return False
    for section in sections_of(config).values():
        if is_component(section.get("trainer")) or is_component(section.get("evaluator")):
            return True
        if isinstance(section.get("metrics"), list):
            return True
    return False


def needs_compat_layer(config: Mapping[str, Any]) -> bool:
    """Whether the MMAR's custom code was written for Clara 4.0: a 4.0 config, or one ``clara-fl convert`` wrote
    from it (its custom transforms run in LegacyTransform)."""
    legacy = (LEGACY_TRANSFORM_CLASS, LEGACY_HANDLER_CLASS)
    return is_clara40(config) or any(text.startswith(legacy) for text in _strings(config))
