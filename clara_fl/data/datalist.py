"""MSD-style datalists: ``{"training": [{"image": ..., "label": ...}], "validation": [...], "test": [...]}``."""

from __future__ import annotations

import os
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.config.jsonio import load_json

__all__ = ["load_datalist", "PATH_KEYS"]

# Item keys that hold file paths relative to the data root.
PATH_KEYS = ("image", "label")


def load_datalist(path: str, key: str, base_dir: str | None = None, check_files: bool = True) -> list[dict[str, Any]]:
    """The items under ``key``, with relative paths joined to ``base_dir`` (default: the datalist's folder).

    Every referenced file must exist: a missing image is reported by name before any training starts.
    """
    datalist = load_json(path, what="datalist file")
    if not isinstance(datalist, dict):
        raise ConfigError("a datalist must be a JSON object with lists such as 'training' and 'validation'", file=path)
    if key not in datalist:
        lists = sorted(k for k, v in datalist.items() if isinstance(v, list))
        raise ConfigError(f"datalist has no key '{key}' (it has: {', '.join(lists) or 'no lists'})", file=path)
    entries = datalist[key]
    if not isinstance(entries, list):
        raise ConfigError(f"'{key}' must be a list of items, got {type(entries).__name__}", file=path)
    base_dir = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(path))
    items: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        item = {"image": entry} if isinstance(entry, str) else dict(entry) if isinstance(entry, dict) else None
        if item is None:
            raise ConfigError(
                f"item must be a path or an object, got {type(entry).__name__}", file=path, path=f"{key}[{index}]"
            )
        for k in PATH_KEYS:
            value = item.get(k)
            if isinstance(value, str):
                item[k] = value if os.path.isabs(value) else os.path.normpath(os.path.join(base_dir, value))
                if check_files and not os.path.exists(item[k]):
                    raise ConfigError(f"{k} file not found: {item[k]}", file=path, path=f"{key}[{index}].{k}")
        items.append(item)
    if not items:
        raise ConfigError(f"'{key}' is empty: nothing to train or validate on", file=path)
    return items
