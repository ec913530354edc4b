"""MkDocs hook: Sphinx roles in clara_fl's docstrings (``:class:`~a.b.C```) shown as the code they name.

mkdocstrings renders docstrings as Markdown, which leaves the role's prefix in the text
(``:class:<code>~a.b.C</code>``); this drops the prefix and, for ``~``, all but the last name, as Sphinx does.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|mod|func|meth|data|attr|exc|obj|const):<code>(~?)([^<]+)</code>")


def _as_code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"


def on_page_content(html: str, **_: Any) -> str:
    """The page's HTML with every Sphinx role replaced by the code it names."""
    return _ROLE.sub(_as_code, html)
