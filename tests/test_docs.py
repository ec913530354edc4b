"""The docs site's sources (mkdocs.yml, docs/api/): every public module is documented, every nav entry exists.

``make docs`` builds the site with ``--strict``; these checks catch the two ways it drifts from the code
without running mkdocs: a new module that no API page lists, and a page that the nav names but is gone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "clara_fl"
DOCS = REPO / "docs"
API_PAGES = DOCS / "api"

# `::: clara_fl.x.y` at the start of a line: mkdocstrings renders that module there
_DIRECTIVE = re.compile(r"^:::\s*(\S+)\s*$", re.MULTILINE)


def public_modules() -> set[str]:
    """Dotted names of clara_fl's public modules: in regular packages, no part starting with ``_``.

    A ``.py`` file in a folder without ``__init__.py`` (the shipped examples under ``clara_fl/resources/``)
    is a script or package data, not part of the API.
    """
    modules = set()
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts or not _in_regular_packages(path):
            continue
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(part.startswith("_") for part in parts):
            modules.add(".".join(parts))
    return modules


def _in_regular_packages(path: Path) -> bool:
    """Whether every folder from clara_fl/ down to ``path`` has an ``__init__.py``."""
    return all((folder / "__init__.py").is_file() for folder in path.parents if folder.is_relative_to(PACKAGE))


def documented_modules() -> dict[str, list[str]]:
    """Each name an API page renders (``::: name``), with the pages that render it."""
    names: dict[str, list[str]] = {}
    for page in sorted(API_PAGES.glob("*.md")):
        for name in _DIRECTIVE.findall(page.read_text()):
            names.setdefault(name, []).append(page.name)
    return names


def nav_files(nav: Any) -> list[str]:
    """Every file a mkdocs nav names, at any depth (``- Title: file.md`` or ``- file.md``)."""
    if isinstance(nav, str):
        return [] if "://" in nav else [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in nav_files(value)]
    return []


def test_every_public_module_is_on_an_api_page() -> None:
    modules = public_modules()

    missing = modules - documented_modules().keys()

    assert "clara_fl.config.errors" in modules and "clara_fl.fl.site.learner" in modules
    assert not missing, f"public modules on no page of docs/api/ (add `::: NAME` to its layer): {sorted(missing)}"


def test_api_pages_name_only_existing_modules_once() -> None:
    documented = documented_modules()

    unknown = documented.keys() - public_modules()
    repeated = {name: pages for name, pages in documented.items() if len(pages) > 1}

    assert not unknown, f"docs/api/ renders modules that do not exist or are private: {sorted(unknown)}"
    assert not repeated, f"modules rendered on more than one API page: {repeated}"


def test_mkdocs_nav_names_only_existing_files() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())

    files = nav_files(config["nav"])

    assert "index.md" in files and "api/config.md" in files
    absent = [f for f in files if not (DOCS / f).is_file()]
    assert not absent, f"mkdocs.yml's nav names files that docs/ lacks: {absent}"


def test_public_modules_skips_private_modules_and_package_data() -> None:
    modules = public_modules()

    assert "clara_fl.resources" in modules
    assert "clara_fl.__main__" not in modules
    assert not [m for m in modules if m.startswith("clara_fl.resources.examples")]
