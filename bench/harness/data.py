"""The synthetic data every figure trains on, scratch copies of the spleen MMAR and the variables every side sets."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.harness.processes import base_env
from bench.harness.settings import CACHE, MMAR, PY, Settings


@contextmanager
def scratch_folder(given: Path | None, prefix: str) -> Iterator[Path]:
    """``given`` as is (kept for a look afterwards), else a new temporary folder that is removed at the end: an
    arm's simulator workspace is hundreds of MB."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield Path(folder)


def prepare_data(settings: Settings, heterogeneity: str = "none", sites: int = 2) -> Path:
    """Synthetic spleen-like CT (cached): ``dataset.json`` is the union of the sites' datalists (two by default);
    with ``heterogeneity`` mild or strong the sites differ (``sites.json``, figure 8)."""
    suffix = ("" if heterogeneity == "none" else f"-{heterogeneity}") + ("" if sites == 2 else f"-{sites}-sites")
    root = CACHE / f"data-{settings.shape}-{settings.cases}{suffix}"
    stamp = root / ".complete"
    if not stamp.is_file():
        shutil.rmtree(root, ignore_errors=True)
        code = (
            "import sys; from clara_fl.data.synthetic import make_synthetic_dataset; "
            f"make_synthetic_dataset(sys.argv[1], cases={settings.cases}, sites={sites}, shape=({settings.shape},) * 3, "
            f"heterogeneity={heterogeneity!r})"
        )
        subprocess.run([PY, "-c", code, str(root)], check=True, env=base_env(2))
        stamp.write_text("ok\n")
    return root


def copy_mmar(dest: Path, source: Path = MMAR) -> Path:
    """An MMAR's config/, docs/ and commands/ (never its models/ or eval/ outputs) in a scratch folder."""
    shutil.rmtree(dest, ignore_errors=True)
    for folder in ("config", "docs", "commands"):
        if (source / folder).is_dir():
            shutil.copytree(source / folder, dest / folder)
    return dest


def mmar_settings(settings: Settings, epochs: int, val_interval: int) -> list[str]:
    """The variables every side of a comparison uses (as ``--set`` values)."""
    roi = settings.roi
    return [
        f"epochs={epochs}",
        f"roi_size=[{roi},{roi},{roi}]",
        f"learning_rate={settings.lr}",
        "num_workers=0",
        f"num_interval_per_valid={val_interval}",
    ]


def write_site_config(path: Path, data_root: Path, options: Mapping[str, Any] | None = None) -> Path:
    """A ``--site-config`` file whose sites read ``data_root`` and their own ``dataset_{SITE_NAME}.json``, with the
    site file's ``options`` (``keep_better_model``, ...)."""
    environment = {"DATA_ROOT": str(data_root), "DATASET_JSON": str(data_root / "dataset_{SITE_NAME}.json")}
    path.write_text(json.dumps({"environment": environment, **(options or {})}))
    return path
