"""Writing values in MONAI bundle syntax that :class:`monai.bundle.ConfigParser` reads back unchanged.

ConfigParser gives meaning to a leading ``$`` (expression), ``@`` (reference) and ``%`` (macro), and turns
EVERY ``#`` of every string into its id separator ``::``. A literal string that would be misread is
written as a ``$`` expression that rebuilds it without those characters.
"""

from __future__ import annotations

import re

__all__ = ["bundle_id", "literal", "python_literal", "reference"]

_SPECIAL_START = ("$", "@", "%")
# Characters ConfigParser rewrites or reads as references anywhere in an expression.
_UNSAFE = re.compile(r"([#@])")


def bundle_id(*parts: str) -> str:
    """``bundle_id("train", "dataset")`` -> ``"train#dataset"`` (empty parts skipped)."""
    return "#".join(p for p in parts if p)


def reference(target: str) -> str:
    """``"@train#dataset"``: the bundle item ``target``."""
    return f"@{target}"


def python_literal(text: str) -> str:
    """A Python expression for ``text`` that contains neither ``#`` nor ``@``.

    >>> python_literal("a#b")
    "'a' + chr(35) + 'b'"
    """
    parts = [p for p in _UNSAFE.split(text)]
    pieces = []
    for part in parts:
        if part in ("#", "@"):
            pieces.append(f"chr({ord(part)})")
        elif part or len(parts) == 1:
            pieces.append(repr(part))
    return " + ".join(pieces)


def literal(text: str) -> str:
    """``text`` as a bundle value that ConfigParser reads back as exactly ``text``."""
    if text.startswith(_SPECIAL_START) or "#" in text:
        return "$" + python_literal(text)
    return text
