"""Today's MONAI names and arguments written into a config, for ``clara-fl convert``.

When a config is loaded, the resolver maps old names and arguments as it builds (see :mod:`compat`), so a
config keeps working as written. ``convert`` writes the mapping out instead, so the converted config names
only classes and arguments that exist today. A renamed transform that a validate ``ref`` names by its old
class name keeps that name as its alias (``"EnsureChannelFirstd#AddChanneld"``), so the ``ref`` still finds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from clara_fl.config import compat
from clara_fl.config.clara40.changes import Change
from clara_fl.config.errors import ConfigError, json_path
from clara_fl.config.specs import class_name, is_component, parse_component
from clara_fl.config.variables import is_code

__all__ = ["modernize_names"]


def _walk(value: Any, path: str) -> Iterator[tuple[dict[str, Any], str]]:
    if isinstance(value, dict):
        if is_component(value):
            yield value, path
        for key, item in value.items():
            yield from _walk(item, json_path(path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, json_path(path, index))


def _refs(config: Any) -> set[str]:
    return {str(spec["ref"]) for spec, _ in _walk_refs(config)}


def _walk_refs(value: Any, path: str = "") -> Iterator[tuple[dict[str, Any], str]]:
    if isinstance(value, dict):
        if "ref" in value:
            yield value, path
        for key, item in value.items():
            yield from _walk_refs(item, json_path(path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk_refs(item, json_path(path, index))


def _locate(spec: dict[str, Any]) -> Any:
    """The component's class, never importing a module the restricted policy has not admitted (None then)."""
    from clara_fl.config.locator import locate_component

    return locate_component(spec)


def _code_strings(value: Any, path: str) -> Iterator[tuple[Any, Any, str]]:
    """(container, key, path) of every code string."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(item, str) and is_code(item):
            yield value, key, json_path(path, key)
        else:
            yield from _code_strings(item, json_path(path, key))


def modernize_names(config: dict[str, Any]) -> list[Change]:
    """Rename removed classes and arguments in ``config`` (in place) to today's MONAI; returns the changes."""
    changes: list[Change] = []
    referenced = _refs(config)
    for spec, path in list(_walk(config, "")):
        try:
            parsed = parse_component(spec, path)
        except ConfigError:  # a malformed spec is reported when the converted config is run
            continue
        if parsed is not None and parsed.name is not None:
            old = parsed.name
            legacy = compat.LEGACY_NAMES.get(old)
            if legacy is not None:
                alias = parsed.alias or (old if old in referenced else "")
                spec["name"] = legacy.replacement + (f"#{alias}" if alias else "")
                args = spec.setdefault("args", {})
                for key, value in legacy.defaults.items():
                    args.setdefault(key, value)
                changes.append(
                    Change(
                        json_path(path, "name"), f"{old!r} -> {spec['name']!r} {dict(legacy.defaults) or ''}".rstrip()
                    )
                )
        args = spec.get("args")
        if not isinstance(args, dict):
            continue
        try:
            target = _locate(spec)
        except Exception:  # a class that cannot be found here is reported when the converted config is run
            continue
        if target is None:  # a module that importing could run code: its arguments are left as they are
            continue
        translated = compat.translate_args(class_name(spec), target, args)
        if translated != args:
            removed = sorted(set(args) - set(translated))
            added = {k: v for k, v in translated.items() if args.get(k, object()) != v}
            spec["args"] = translated
            changes.append(
                Change(json_path(path, "args"), f"removed {removed}, set {added}" if removed else f"set {added}")
            )
    for container, key, path in list(_code_strings(config, "")):
        rewritten = compat.translate_threshold_values(container[key])
        if rewritten != container[key]:
            changes.append(Change(path, f"{container[key]!r} -> {rewritten!r}"))
            container[key] = rewritten
    return changes
