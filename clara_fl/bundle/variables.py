"""Clara variables (``{X}``) as bundle variables: root-level ids that ``--X value`` overrides at run time.

A value that is exactly ``"{X}"`` becomes the reference ``"@X"``; text around a placeholder becomes a
``$`` expression joining the pieces, so overriding a variable changes every value built from it
(``DATASET_JSON = "{DATA_ROOT}/dataset.json"`` follows ``DATA_ROOT``). MMAR-relative paths
(``MMAR_CKPT_DIR: "models"``) become paths under ``bundle_root``; Clara's ``DATA_ROOT`` and
``DATASET_JSON`` are also MONAI's conventional ``dataset_dir`` and ``dataset_json``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from clara_fl.bundle.syntax import bundle_id, literal, python_literal
from clara_fl.config.errors import ConfigError, did_you_mean
from clara_fl.config.variables import PLACEHOLDER, config_globals

__all__ = ["BundleVariables", "merge_variables"]

_MMAR_RELATIVE = re.compile(r"^MMAR_\w+$")
_DATA_PATHS = ("DATA_ROOT", "DATASET_JSON")
# Clara name -> MONAI's conventional bundle id for the same thing.
MONAI_NAMES = {"DATA_ROOT": "dataset_dir", "DATASET_JSON": "dataset_json"}


def merge_variables(
    config: Mapping[str, Any], environment: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Config globals < environment.json < ``--set``, as written (placeholders kept)."""
    merged = dict(config_globals(config))
    for source in (environment, overrides):
        for name, value in source.items():
            head, _, key = name.partition(".")
            if key and isinstance(merged.get(head), dict):
                merged[head] = {**merged[head], key: value}
            else:
                merged[name] = value
    return merged


class BundleVariables:
    """The variable table of one config, written as bundle items.

    Args:
        values: the merged variables as written (:func:`merge_variables`).
        mmar_root: the MMAR folder; relative data paths are made absolute against it, as Clara read them.
        file: the config file, for errors.
    """

    def __init__(self, values: Mapping[str, Any], mmar_root: str, file: str) -> None:
        self.values = dict(values)
        self.mmar_root = mmar_root
        self.file = file

    def __contains__(self, name: str) -> bool:
        head = name.split(".")[0]
        return head in self.values or head == "MMAR_ROOT"

    def ref_id(self, name: str) -> str:
        """The bundle id of variable ``name`` (``determinism.random_seed`` -> ``determinism#random_seed``)."""
        return bundle_id(*name.split("."))

    def _check_known(self, name: str, path: str) -> None:
        if name not in self:
            raise ConfigError(
                f"undefined variable '{{{name}}}'{did_you_mean(name, self.values)}; define it in the config's "
                "globals, environment.json or with --set",
                file=self.file,
                path=path,
            )

    def text(self, text: str, path: str) -> Any:
        """A config string holding placeholders as a bundle value (a reference or a ``$`` expression)."""
        whole = PLACEHOLDER.fullmatch(text)
        if whole:
            self._check_known(whole.group(1), path)
            return "@" + self.ref_id(whole.group(1))
        pieces: list[str] = []
        position = 0
        for match in PLACEHOLDER.finditer(text):
            self._check_known(match.group(1), path)
            if match.start() > position:
                pieces.append(python_literal(text[position : match.start()]))
            pieces.append(f"str(@{self.ref_id(match.group(1))})")
            position = match.end()
        if position < len(text):
            pieces.append(python_literal(text[position:]))
        return "$" + " + ".join(pieces)

    def value(self, value: Any, path: str) -> Any:
        """Any JSON value of a variable or config item with its placeholders as bundle references."""
        if isinstance(value, dict):
            return {k: self.value(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str):
            return self.text(value, path) if PLACEHOLDER.search(value) else literal(value)
        return value

    def _variable(self, name: str, value: Any) -> Any:
        if isinstance(value, str) and not PLACEHOLDER.search(value):
            if name in _DATA_PATHS:
                path = os.path.expanduser(value)
                return literal(path if os.path.isabs(path) else os.path.normpath(os.path.join(self.mmar_root, path)))
            if _MMAR_RELATIVE.match(name) and not os.path.isabs(value) and not value.startswith("~"):
                return "$os.path.join(@bundle_root, " + python_literal(value) + ")"
        return self.value(value, name)

    def items(self, reserved: set[str]) -> dict[str, Any]:
        """Root-level bundle items for every variable, plus ``dataset_dir``/``dataset_json`` and ``MMAR_ROOT``.

        Raises:
            ConfigError: a variable has the name of an item the bundle itself defines.
        """
        items: dict[str, Any] = {"MMAR_ROOT": "@bundle_root"}
        for name, value in self.values.items():
            if name in reserved or name in MONAI_NAMES.values():
                raise ConfigError(
                    f"variable '{name}' has the name of an item every bundle defines; rename it in the MMAR",
                    file=self.file,
                    path=name,
                )
            if name in MONAI_NAMES:
                items[MONAI_NAMES[name]] = self._variable(name, value)
                items[name] = "@" + MONAI_NAMES[name]
            else:
                items[name] = self._variable(name, value)
        return items
