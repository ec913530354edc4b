"""``clara-fl job create``: an MMAR becomes a complete FLARE job folder, exported by ClaraFedAvgRecipe.

The job's app folder is the MMAR (config/, custom/, docs/), never its data or trained models; the FLARE
configs come from a job template with the round, epoch and client counts asked for (clara_fl.recipes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.recipes.app_configs import (
    DEFAULT_TEMPLATE,
    FedAvgSettings,
    find_template,
    read_conf,
    validation_key_metric,
)
from clara_fl.resources import templates_dir

__all__ = ["TEMPLATES_DIR", "create_job", "find_template", "validation_key_metric"]

TEMPLATES_DIR = templates_dir()
_read_conf = read_conf  # tests read templates through this name


def create_job(
    mmar: str | os.PathLike,
    output: str | os.PathLike,
    template: str = DEFAULT_TEMPLATE,
    num_rounds: int | None = None,
    local_epochs: int | None = None,
    min_clients: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    nproc_per_site: int | None = None,
    settings: FedAvgSettings | None = None,
    algorithm: str | None = None,
    algorithm_args: Mapping[str, Any] | None = None,
) -> Path:
    """Write the job folder ``output`` for ``mmar`` and return it.

    Args:
        settings: values read from the MMAR's own Clara FL configs; the explicit arguments win over them.
        algorithm: the FL algorithm (``--algorithm``), with ``algorithm_args`` (``--algorithm-arg``).

    Raises:
        ConfigError: not an MMAR, an unknown template, or ``output`` holds something and ``force`` is not set.
    """
    from clara_fl.recipes.fedavg import ClaraFedAvgRecipe, job_name

    output = Path(output).resolve()
    if output.exists() and any(output.iterdir()) and not force:
        raise ConfigError("job folder exists and is not empty (use --force to replace it)", file=str(output))
    recipe = ClaraFedAvgRecipe(
        mmar,
        name=job_name(output.name),
        num_rounds=num_rounds,
        min_clients=min_clients,
        local_epochs=local_epochs,
        nproc_per_site=nproc_per_site,
        overrides=overrides,
        template=template,
        settings=settings,
        algorithm=algorithm,
        algorithm_args=algorithm_args,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".clara_fl_job_", dir=output.parent) as staging:
        recipe.export(staging)
        if output.exists():
            shutil.rmtree(output)
        os.replace(Path(staging) / recipe.name, output)
    return output
