"""What an FL algorithm is to a job: a name, typed parameters, and the edits it makes to the job's app configs.

Plain data and functions only (no nvflare, no torch): ``clara-fl job create`` checks names and arguments
and renders job folders without importing the training stack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Algorithm", "AlgorithmParameter", "ConfigureFn"]

# (server app config, client app config, checked arguments) -> None; edits the two dicts in place
ConfigureFn = Callable[[dict[str, Any], dict[str, Any], Mapping[str, Any]], None]


@dataclass(frozen=True)
class AlgorithmParameter:
    """One ``--algorithm-arg NAME=VALUE`` an algorithm takes.

    Args:
        name: the argument's name.
        type: float, int, str or bool: what the value is parsed as.
        default: the value when the argument is not given.
        help: one line for ``--help`` and error messages.
        choices: the allowed values, when only some are.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Algorithm:
    """An FL algorithm selectable with ``clara-fl job create --algorithm NAME``.

    Args:
        name: what ``--algorithm`` takes.
        summary: one line for ``--help``.
        parameters: the ``--algorithm-arg`` names it takes.
        configure: edits the job's server and client app configs (FLARE config entries) for the checked
            arguments: the server's workflow/generator/aggregator, the site Learner's ``algorithm`` and
            ``algorithm_args``.
        supports_nproc_per_site: whether a site may train it in several DDP processes.
        supports_he: whether it runs under ``--he``: FLARE's HE aggregator and model generator replace the
            server's own, so an algorithm that replaces them, or sends only part of the model, does not.
        job_template: the job template it runs on when the job asks for the default one (SCAFFOLD needs FLARE's
            ModelController template); None: any template.
    """

    name: str
    summary: str
    parameters: tuple[AlgorithmParameter, ...]
    configure: ConfigureFn
    supports_nproc_per_site: bool = True
    supports_he: bool = True
    job_template: str | None = None
