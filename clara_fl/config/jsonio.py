"""Reading config JSON files with errors that point at the line and column."""

from __future__ import annotations

import json
import os
from typing import Any

from clara_fl.config.errors import ConfigError

__all__ = ["load_json"]


def load_json(path: str | os.PathLike, what: str = "config file") -> Any:
    """Parse ``path``; a missing file or a syntax error becomes a :class:`ConfigError` naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{what} not found", file=path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}", file=path) from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"not a UTF-8 text file ({e.reason})", file=path) from e
