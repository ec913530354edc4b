"""What a job's app folder holds besides the FLARE configs: the MMAR's config/, docs/ and custom/ folders.

Never the MMAR's data or trained models. An MMAR's own Clara FL configs are read into the job's settings
(:mod:`clara_fl.recipes.clara_configs`); the job's FLARE configs are generated, so those files stay out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["MMAR_FOLDERS", "stage_mmar_files"]

MMAR_FOLDERS = ("config", "custom", "docs")
IGNORED_FILES = shutil.ignore_patterns("__pycache__", "*.pyc")
IGNORED_CONFIGS = shutil.ignore_patterns("__pycache__", "*.pyc", "config_fed_server.json", "config_fed_client.json")


def stage_mmar_files(mmar: Path, environment: dict[str, Any] | None, staging: Path) -> list[str]:
    """Copy the MMAR's app folders into ``staging``; returns the folders copied (of :data:`MMAR_FOLDERS`).

    custom/ is copied only when it holds Python code: a job without BYOC code stays under the sites' class
    allow-list. ``environment`` (the MMAR's environment with the job's values on top) replaces
    config/environment.json when given.
    """
    copied = []
    for folder in MMAR_FOLDERS:
        source = mmar / folder
        if not source.is_dir():
            continue
        if folder == "custom" and not any(source.rglob("*.py")):
            continue
        shutil.copytree(source, staging / folder, ignore=IGNORED_CONFIGS if folder == "config" else IGNORED_FILES)
        copied.append(folder)
    if environment is not None:
        (staging / "config").mkdir(parents=True, exist_ok=True)
        (staging / "config" / "environment.json").write_text(json.dumps(environment, indent=2) + "\n")
    return copied
