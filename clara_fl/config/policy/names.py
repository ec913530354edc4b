"""Telling, without importing anything, whether a string names something Python could import.

MONAI turns some strings into objects (``LoadImage(reader="os.system")`` goes through ``pydoc.locate``,
which imports the module and returns the callable; a bare ``"eval"`` or ``"open"`` locates the builtin).
A string is such a name when it is a dotted identifier whose first part is an importable module, or a
bare identifier that is a builtin or a top-level module.
"""

from __future__ import annotations

import builtins
import importlib.util
import re
import sys

__all__ = ["importable_name"]

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def _is_module(top: str) -> bool:
    if top in sys.modules or top in sys.builtin_module_names:
        return True
    try:
        # For a top-level name the finders only look on sys.path; nothing is executed.
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return True  # a broken finder entry: treat as importable, the safe side


def importable_name(text: str) -> str | None:
    """What ``text`` would name if a library located it (``"the Python builtin 'eval'"``), or None.

    Args:
        text: any string value of a config.
    """
    text = text.strip()
    if not _DOTTED.fullmatch(text):
        return None
    top, dot, _ = text.partition(".")
    if not dot and hasattr(builtins, text):
        return f"the Python builtin '{text}'"
    if not _is_module(top):
        return None
    if not dot:
        return f"the Python module '{text}'"
    return f"a Python callable ('{top}' is an importable module)"
