"""What clara-fl ships as package data: the MMARs, FLARE job templates, ready-to-run jobs and recipe examples.

They are found through the installed package (importlib.resources), so a wheel or ``pip install .`` has them;
the checkout's top-level ``mmars/``, ``job_templates/``, ``simulator_configs/`` and ``examples/`` are links to
these folders, not copies.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["examples_dir", "mmar_path", "mmars_dir", "shipped_mmars", "simulator_configs_dir", "templates_dir"]


def _folder(name: str) -> Path:
    # clara-fl is installed as plain files (setuptools wheel, no zip import): the resource is a real folder
    return Path(str(files(__name__) / name))


def mmars_dir() -> Path:
    """The folder of shipped MMARs (``spleen_ct_seg``, ...)."""
    return _folder("mmars")


def templates_dir() -> Path:
    """The folder of FLARE job templates (``nvflare job create -w``)."""
    return _folder("job_templates")


def simulator_configs_dir() -> Path:
    """The folder of FLARE jobs that run as they are in the simulator."""
    return _folder("simulator_configs")


def examples_dir() -> Path:
    """The folder of recipe examples: ``<mmar>/job.py`` per shipped MMAR."""
    return _folder("examples")


def shipped_mmars() -> list[str]:
    """Names of the shipped MMARs."""
    return sorted(p.name for p in mmars_dir().iterdir() if (p / "config" / "config_train.json").is_file())


def mmar_path(name: str) -> Path:
    """A shipped MMAR's root folder by name.

    Raises:
        KeyError: no shipped MMAR has that name.
    """
    path = mmars_dir() / name
    if not (path / "config" / "config_train.json").is_file():
        raise KeyError(f"no shipped MMAR '{name}' (shipped: {', '.join(shipped_mmars())})")
    return path
