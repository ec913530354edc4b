"""The site side of each FL algorithm, by the name a job gives the Learner (``algorithm``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.fl.site.ditto import Ditto
from clara_fl.fl.site.fedbn import FedBN
from clara_fl.fl.site.fedprox import FedProx
from clara_fl.fl.site.local_algorithm import LocalAlgorithm
from clara_fl.fl.site.scaffold import Scaffold

__all__ = ["LOCAL_ALGORITHMS", "local_algorithm"]

LOCAL_ALGORITHMS: dict[str, type[LocalAlgorithm]] = {
    "fedavg": LocalAlgorithm,
    "fedprox": FedProx,
    "fedbn": FedBN,
    "scaffold": Scaffold,
    "ditto": Ditto,
}


def local_algorithm(name: str, args: Mapping[str, Any] | None = None) -> LocalAlgorithm:
    """The site side of algorithm ``name`` with its arguments.

    Raises:
        ConfigError: no site-side algorithm has that name, or its arguments do not fit it.
    """
    where = "components[clara_learner].args.algorithm"
    try:
        cls = LOCAL_ALGORITHMS[name]
    except KeyError:
        valid = ", ".join(sorted(LOCAL_ALGORITHMS))
        raise ConfigError(f"unknown FL algorithm '{name}' (valid: {valid})", path=where) from None
    try:
        return cls(**dict(args or {}))
    except TypeError as e:
        raise ConfigError(f"{name}: {e}", path=f"{where}_args") from e
