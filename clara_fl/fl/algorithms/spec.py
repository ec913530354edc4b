"""What an FL algorithm is: a name, typed parameters with their checks, its limits, its site class and its
server part.

Plain data only (no nvflare, no torch): the job side (``clara-fl job create``, the recipe) and the site side
(the Learner) both read these objects; classes are named by dotted path and imported only where they run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.config.variables import as_bool

__all__ = ["Algorithm", "AlgorithmParameter", "GeneratorArgsFn", "ServerPart", "WorkflowKind", "refusal"]

#: the server workflow family an algorithm needs: FLARE's ScatterAndGather (with a shareable generator) or
#: FLARE's ModelController API (FedAvg, Scaffold)
WorkflowKind = Literal["scatter_and_gather", "model_controller"]
# (the algorithm's server arguments, the job's persistor id, the job's number of rounds) -> generator args
GeneratorArgsFn = Callable[[Mapping[str, Any], str, int], dict[str, Any]]


@dataclass(frozen=True)
class AlgorithmParameter:
    """One ``--algorithm-arg NAME=VALUE`` an algorithm takes.

    Args:
        name: the argument's name, as the job and the site class take it.
        type: float, int, str or bool: what the value is parsed as.
        default: the value when the argument is not given (None: the site decides, as ``default_text`` says).
        help: one line for ``--help`` and error messages.
        choices: the allowed values, when only some are.
        check: True for an allowed value (after conversion); ``expected`` says which are.
        expected: what ``check`` allows, for the error (``>= 0``).
        side: who uses it: the site class (``site``) or the server part (``server``).
        default_text: what the default means, for ``--help`` and errors, when ``repr(default)`` would not say
            (``"the round's local training"``).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    expected: str = ""
    side: Literal["site", "server"] = "site"
    default_text: str = ""

    def described(self) -> str:
        """``name (type, default ...)``: the parameter in one phrase."""
        return f"{self.name} ({self.type.__name__}, default {self.default_text or repr(self.default)})"


@dataclass(frozen=True)
class ServerPart:
    """What an algorithm runs on the server in place of FedAvg's parts; the defaults change nothing.

    Args:
        workflow: dotted path of the training workflow class that replaces the template's (same arguments).
        workflow_id: the id the replacing workflow runs under.
        needs: the workflow family the template must have for the replacement.
        shareable_generator: dotted path of the shareable generator that replaces the template's.
        generator_args: the replacing generator's arguments.
        needs_weight_diff: the sites must send weight differences (the aggregator expects WEIGHT_DIFF).
    """

    workflow: str | None = None
    workflow_id: str | None = None
    needs: WorkflowKind | None = None
    shareable_generator: str | None = None
    generator_args: GeneratorArgsFn | None = None
    needs_weight_diff: bool = False


@dataclass(frozen=True)
class Algorithm:
    """An FL algorithm: ``clara-fl job create --algorithm NAME``, the Learner's ``algorithm`` at the sites.

    Args:
        name: what ``--algorithm`` and the Learner take.
        summary: one line for ``--help``.
        site_class: dotted path of its :class:`~clara_fl.fl.site.local_algorithm.LocalAlgorithm`, built with its
            site arguments.
        parameters: the ``--algorithm-arg`` names it takes.
        server: what it runs on the server instead of FedAvg's parts.
        supports_nproc_per_site: whether a site may train it in several DDP processes (False: it changes local
            training itself, which then runs in the Learner's process).
        supports_he: whether it runs under ``--he``: FLARE's HE aggregator and model generator replace the
            server's own, so an algorithm that replaces them, or sends only part of the model, does not.
        job_template: the job template it runs on when the job asks for the default one; None: any template.
        supports_robust_aggregation: whether ``--aggregator`` (a robust rule in place of the weighted mean) applies:
            its server step is an aggregation of the sites' model updates alone (not SCAFFOLD's control variates).
        assumes_sgd: its site correction assumes the MMAR's optimizer is plain SGD (SCAFFOLD: ``c - c_i`` added to
            the gradient, the control variates updated from the local lr and step count);
            :func:`~clara_fl.fl.algorithms.optimizer_notes.optimizer_note` says so at ``job create`` when it is not.
        dp_refusal: why it cannot run under ``--dp`` (DP-SGD at the sites through Opacus, whose optimizer and loader
            replace the trainer's); None: it can.
    """

    name: str
    summary: str
    site_class: str
    parameters: tuple[AlgorithmParameter, ...] = ()
    server: ServerPart = field(default_factory=ServerPart)
    supports_nproc_per_site: bool = True
    supports_he: bool = True
    job_template: str | None = None
    supports_robust_aggregation: bool = True
    assumes_sgd: bool = False
    dp_refusal: str | None = None

    def checked_args(self, given: Mapping[str, Any] | None = None, where: str = "--algorithm-arg") -> dict[str, Any]:
        """Every argument: the given ones converted to their types and checked, the others at their defaults.

        Args:
            given: arguments by name (strings from the command line, or values).
            where: the option (``--algorithm-arg``) or the Learner's config path the arguments come from.

        Raises:
            UsageError: where ``where`` is an option: an argument it does not take, a value of the wrong type or
                out of its range.
            ConfigError: the same, where ``where`` is a config path.
        """
        by_name = {p.name: p for p in self.parameters}
        values = dict(given or {})
        unknown = sorted(set(values) - set(by_name))
        if unknown:
            described = [p.described() for p in self.parameters]
            message = f"{self.name} takes no argument {', '.join(unknown)} (valid: {', '.join(described) or 'none'})"
            raise refusal(where, f"{unknown[0]}={values[unknown[0]]}", message, path=where)
        return {
            p.name: self._converted(p, values[p.name], where) if values.get(p.name) is not None else p.default
            for p in self.parameters
        }

    def site_args(self, checked: Mapping[str, Any]) -> dict[str, Any]:
        """Of the checked arguments, those its site class takes (one left unset, None, is not sent: the site's
        class decides, as its default says)."""
        return {
            p.name: checked[p.name] for p in self.parameters if p.side == "site" and checked.get(p.name) is not None
        }

    def server_args(self, checked: Mapping[str, Any]) -> dict[str, Any]:
        """Of the checked arguments, those its server part takes."""
        return {p.name: checked[p.name] for p in self.parameters if p.side == "server" and p.name in checked}

    def _converted(self, parameter: AlgorithmParameter, value: Any, where: str) -> Any:
        path, given = f"{where}.{parameter.name}", f"{parameter.name}={value}"
        converted: Any = None
        if parameter.type is bool:
            converted = as_bool(value)
        elif parameter.type in (int, float) and not isinstance(value, bool):
            try:
                converted = parameter.type(value)
            except (TypeError, ValueError):
                converted = None
            if parameter.type is int and isinstance(value, float) and not value.is_integer():
                converted = None
        elif parameter.type is str and isinstance(value, str):
            converted = value
        if converted is None:
            message = f"{self.name} expects {parameter.type.__name__} for {parameter.name}, got {value!r}"
            raise refusal(where, given, message, path=path)
        if parameter.choices is not None and converted not in parameter.choices:
            valid = ", ".join(str(c) for c in parameter.choices)
            message = f"{self.name}: {parameter.name} must be one of {valid}, got {value!r}"
            raise refusal(where, given, message, path=path)
        if parameter.check is not None and not parameter.check(converted):
            message = f"{self.name}: {parameter.name} must be {parameter.expected}, got {converted!r}"
            raise refusal(where, given, message, path=path)
        return converted


def refusal(where: str, value: str | None, message: str, path: str | None = None) -> UsageError | ConfigError:
    """The error for a bad algorithm name or argument: a UsageError naming the option and the value given where
    ``where`` is a command-line option (``--algorithm``, ``--algorithm-arg``), else a ConfigError at ``path`` (a
    site's Learner config path; default ``where``)."""
    if where.startswith("--"):
        return UsageError(where, value, message)
    return ConfigError(message, path=path if path is not None else where)
