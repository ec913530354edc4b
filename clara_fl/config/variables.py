"""Clara variables: ``{X}`` placeholders filled from config globals, environment.json and ``--set``.

A string that is exactly ``"{X}"`` becomes X's typed value (number, bool, list, dict); any other
string containing ``{X}`` gets X's text. Precedence, lowest first: config globals,
environment.json, ``--set K=V``.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from clara_fl.config.errors import ConfigError, UsageError, did_you_mean, json_path

__all__ = ["Variables", "as_bool", "parse_cli_value", "parse_set_args", "config_globals", "is_code"]

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")
_TRUE_WORDS = {"true", "yes", "on"}
_FALSE_WORDS = {"false", "no", "off"}
# Keys whose relative value is a path under the MMAR root.
_MMAR_RELATIVE = re.compile(r"^(MMAR_\w+|DATA_ROOT)$")
# Keys whose value is a path where "~" means the user's home.
_PATH_VARIABLE = re.compile(r"^(MMAR_\w+|DATA_ROOT|DATASET_JSON)$")


def is_code(value: str) -> bool:
    """Clara code strings: ``#expression`` and ``lambda ...``."""
    return value.startswith("#") or value.lstrip().startswith("lambda ") or value.lstrip().startswith("lambda:")


def as_bool(value: Any) -> bool | None:
    """Clara's one boolean rule: ``True``/``False``, or a true/false/yes/no/on/off word in any case; else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return None


def parse_cli_value(text: str) -> Any:
    """Parse a ``--set`` value: int, float, a bool word in any case, a JSON list/dict, else the string."""
    stripped = text.strip()
    for cast in (int, float):
        try:
            return cast(stripped)
        except ValueError:
            pass
    if as_bool(stripped) is not None:
        return as_bool(stripped)
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            pass
    return text


def parse_set_args(items: Iterable[str] | None) -> dict[str, Any]:
    """``["epochs=2", "amp=False"]`` -> ``{"epochs": 2, "amp": False}``.

    Raises:
        UsageError: an item without ``=`` or without a name.
    """
    values: dict[str, Any] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise UsageError("--set", item, "expected NAME=VALUE")
        values[name.strip()] = parse_cli_value(text)
    return values


def config_globals(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config's first-level variables: primitives, lists of primitives, and ``determinism``."""
    found: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            found[key] = value
        elif isinstance(value, list) and all(isinstance(v, (str, int, float, bool)) for v in value):
            found[key] = value
        elif key == "determinism" and isinstance(value, dict):
            found[key] = value
    return found


class Variables:
    """The resolved variable table of one config; :meth:`substitute` applies it to any JSON value."""

    def __init__(self, values: Mapping[str, Any], file: str | None = None) -> None:
        self._values = dict(values)
        self.file = file
        self._mmar_root: str | None = None

    @classmethod
    def collect(
        cls,
        config: Mapping[str, Any],
        environment: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        mmar_root: str | None = None,
        file: str | None = None,
        environment_file: str | None = None,
    ) -> Variables:
        """Merge the three sources by precedence and resolve MMAR-relative paths."""
        raw: dict[str, Any] = {}
        if mmar_root is not None:
            raw["MMAR_ROOT"] = mmar_root
        raw.update(config_globals(config))
        for source in (environment or {}, overrides or {}):
            for name, value in source.items():
                head, _, key = name.partition(".")
                if key and isinstance(raw.get(head), dict):  # determinism.random_seed=3 sets one entry
                    raw[head] = {**raw[head], key: value}
                else:
                    raw[name] = value
        table = cls(raw, file=file)
        table._mmar_root = mmar_root
        # Values may refer to other variables ("{DATA_ROOT}/dataset.json"); resolve them in place.
        for name in list(raw):
            origin = environment_file if environment and name in environment else file
            table._values[name] = table._resolve_value(name, raw[name], origin, set())
        return table

    def _as_path(self, name: str, value: Any) -> Any:
        """``~`` expanded in path variables; relative MMAR_* and DATA_ROOT joined to the MMAR root."""
        if not isinstance(value, str) or not value:
            return value
        if _PATH_VARIABLE.match(name) and value.startswith("~"):
            value = os.path.expanduser(value)
        if self._mmar_root is not None and _MMAR_RELATIVE.match(name) and not os.path.isabs(value):
            value = os.path.normpath(os.path.join(self._mmar_root, value))
        return value

    def _resolve_value(self, name: str, value: Any, source: str | None, visiting: set[str]) -> Any:
        """Fill ``value``'s placeholders with the referred variables' final values (paths resolved too)."""
        if not isinstance(value, str) or not PLACEHOLDER.search(value):
            return self._as_path(name, value)
        if name in visiting:
            raise ConfigError(f"variable '{name}' refers to itself through {sorted(visiting)}", file=source, path=name)
        visiting = visiting | {name}

        def lookup(ref: str) -> Any:
            if ref not in self._values and ref.split(".")[0] not in self._values:
                raise ConfigError(
                    f"undefined variable '{{{ref}}}'{did_you_mean(ref, self._values)}", file=source, path=name
                )
            return self._resolve_value(ref, self.get(ref), source, visiting)

        return self._as_path(name, self._fill(value, lookup, strict=True))

    def __contains__(self, name: str) -> bool:
        return self.get(name, _MISSING) is not _MISSING

    def get(self, name: str, default: Any = None) -> Any:
        head, *rest = name.split(".")
        value = self._values.get(head, _MISSING)
        for part in rest:
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        return default if value is _MISSING else value

    def __getitem__(self, name: str) -> Any:
        value = self.get(name, _MISSING)
        if value is _MISSING:
            raise KeyError(name)
        return value

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def substitute(self, value: Any, path: str = "") -> Any:
        """Return ``value`` with every placeholder filled; containers are copied, never changed in place."""
        if isinstance(value, dict):
            if "disabled" in value and as_bool(self.substitute(value["disabled"], json_path(path, "disabled"))):
                return {
                    **value,
                    "disabled": True,
                }  # nothing inside a disabled component is built: its variables may be undefined
            return {k: self.substitute(v, json_path(path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.substitute(v, json_path(path, i)) for i, v in enumerate(value)]
        if not isinstance(value, str) or "{" not in value:
            return value

        def lookup(ref: str) -> Any:
            found = self.get(ref, _MISSING)
            if found is _MISSING:
                raise ConfigError(
                    f"undefined variable '{{{ref}}}'{did_you_mean(ref, self._values)}; define it in the config's "
                    "globals, environment.json or with --set",
                    file=self.file,
                    path=path,
                )
            return found

        # Code strings keep braces that are not known variables (dict and set literals).
        return self._fill(value, lookup, strict=not is_code(value))

    def _fill(self, text: str, lookup: Any, strict: bool) -> Any:
        whole = PLACEHOLDER.fullmatch(text)
        if whole and (strict or whole.group(1) in self):
            return copy.deepcopy(lookup(whole.group(1)))

        def replace(match: re.Match) -> str:
            if not strict and match.group(1) not in self:
                return match.group(0)
            found = lookup(match.group(1))
            return json.dumps(found) if isinstance(found, (list, dict)) else str(found)

        return PLACEHOLDER.sub(replace, text)


_MISSING = object()
