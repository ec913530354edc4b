"""The site side of the job's FL algorithm: its :class:`LocalAlgorithm`, by the name a job gives the Learner
(``algorithm``), from the algorithm objects of :mod:`clara_fl.fl.algorithms`."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.fl.algorithms import algorithm_named
from clara_fl.fl.site.local_algorithm import LocalAlgorithm

__all__ = ["local_algorithm"]

WHERE = "components[clara_learner].args.algorithm"


def local_algorithm(name: str, args: Mapping[str, Any] | None = None) -> LocalAlgorithm:
    """The site side of algorithm ``name`` with its arguments (checked; the others at their defaults).

    Raises:
        ConfigError: no algorithm has that name, or its arguments do not fit it.
    """
    algorithm = algorithm_named(name, where=WHERE)
    checked = algorithm.checked_args(args, where=f"{WHERE}_args")
    module, _, class_name = algorithm.site_class.rpartition(".")
    site_class = getattr(importlib.import_module(module), class_name)
    if not (isinstance(site_class, type) and issubclass(site_class, LocalAlgorithm)):
        raise ConfigError(f"{algorithm.site_class} is not a LocalAlgorithm", path=WHERE)
    site = site_class(**algorithm.site_args(checked))
    site.modifies_training = not algorithm.supports_nproc_per_site
    return site
