"""Judging a component's resolved arguments by what its class does with each of them.

The resolver calls :meth:`ArgumentJudge.judge` twice for every component: in the dry run, on the values the
config resolves to (variables filled in, ``@`` references replaced by what they build, config code by a
:class:`Planned` stand-in), and again just before the real construction, on the real values.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from clara_fl.config.errors import ConfigError, json_path
from clara_fl.config.policy.builtin import GLOBAL_ARGS
from clara_fl.config.policy.catalog import Catalog, class_name_of, parameters_of
from clara_fl.config.policy.kinds import SENSITIVE, ArgRule, ClassRule, Kind
from clara_fl.config.policy.names import importable_name

__all__ = ["ArgumentJudge", "PathRules", "Planned", "file_name_problem", "looks_like_escape"]

_DATA = ArgRule(Kind.DATA)

# Kinds whose library default is judged too when the config leaves the argument out.
DEFAULTS_JUDGED = frozenset({Kind.PATH_WRITE, Kind.FLAG_TRUE, Kind.FLAG_FALSE})
_SENSITIVE_VALUE = {
    Kind.PATH_READ: "a path it reads",
    Kind.PATH_WRITE: "a folder it writes",
    Kind.FILE_NAME: "part of a file name",
    Kind.FILE_NAME_KEYS: "names of files it writes",
    Kind.NAME: "a name it imports",
    Kind.FLAG_FALSE: "a switch",
    Kind.FLAG_TRUE: "a switch",
    Kind.REFUSED: "options it passes on",
}


@dataclass
class Planned:
    """Dry-run stand-in for a value that would be built: a component of class ``target``, or the result of
    config code (``code``: ``target`` is the code string)."""

    target: Any
    path: str
    code: bool = False


class PathRules(Protocol):
    """Where a job may write and read (the restricted policy's folders for one job at one site)."""

    def check_write(self, value: str, where: str, what: str = "") -> None:
        """Raise a ConfigError when ``value`` (a folder or file written) is outside the job's folder."""
        ...

    def check_read(self, value: str, where: str, what: str = "path") -> None:
        """Raise a ConfigError when ``value`` (read) is outside the job's and the site's data folders."""
        ...


def looks_like_escape(value: str) -> bool:
    """Whether a path may lead out of the folder it is joined to: absolute, ``~`` or with a ``..`` part."""
    return os.path.isabs(value) or value.startswith("~") or ".." in value.replace("\\", "/").split("/")


def file_name_problem(value: str) -> str | None:
    """Why ``value`` cannot be part of a file name joined to a checked folder, or None."""
    if "/" in value or "\\" in value or "\0" in value:
        return "it has a path separator"
    if value in (".", ".."):
        return "it names a folder"
    return None


@dataclass(frozen=True)
class _Arg:
    """One argument being judged: the class as the config names it, the argument and its JSON path."""

    label: str
    name: str
    path: str
    default: bool = False

    @property
    def owner(self) -> str:
        return f"{self.label}'s {'default ' if self.default else ''}{self.name}"

    def at(self, part: str | int) -> _Arg:
        return _Arg(self.label, self.name, json_path(self.path, part), self.default)

    def refuse(self, message: str) -> ConfigError:
        return ConfigError(message, path=self.path)


def _described(value: Any) -> str:
    if isinstance(value, Planned):
        return "config code" if value.code else f"a {getattr(value.target, '__name__', 'built')} component"
    return f"a {type(value).__name__}"


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, tuple, dict)) and not value)


class ArgumentJudge:
    """Judges resolved argument values against the catalog's rules.

    Args:
        catalog: the classes and their argument rules.
        paths: where the job may write and read.
    """

    def __init__(self, catalog: Catalog, paths: PathRules) -> None:
        self.catalog = catalog
        self.paths = paths

    def judge(self, target: Any, label: str, rule: ClassRule, args: Mapping[str, Any], path: str) -> None:
        """Judge every argument of one component, and the library defaults that matter.

        Args:
            target: the component's class.
            label: the class as the config names it (``LoadImaged``).
            rule: the class's catalog rule.
            args: the resolved keyword arguments.
            path: the component's JSON path.

        Raises:
            ConfigError: the first value the policy refuses, its JSON path down to the argument.
        """
        params = parameters_of(target)
        for name, value in args.items():
            arg = _Arg(label, name, json_path(path, "args", name))
            rule_of_arg = self.catalog.argument_rule(rule, name, params)
            if rule_of_arg is None:
                raise arg.refuse(
                    f"'{name}' is not a parameter of {label}: it goes through **kwargs to "
                    f"{rule.passthrough or 'another library'}, and the restricted policy passes on only the options "
                    f"its catalog lists for {label} (a site that trusts it adds them to its catalog, docs/fl.md)"
                )
            self._value(rule_of_arg, value, arg)
        for name, param in (params or {}).items():
            if name in args or param.default is inspect.Parameter.empty:
                continue
            rule_of_arg = self.catalog.argument_rule(rule, name, params)
            if rule_of_arg is not None and rule_of_arg.kind in DEFAULTS_JUDGED:
                self._value(rule_of_arg, param.default, _Arg(label, name, json_path(path, "args", name), True))

    # -- by kind --------------------------------------------------------------------------------------

    def _value(self, rule: ArgRule, value: Any, arg: _Arg) -> None:
        if isinstance(value, Planned) and value.code and rule.kind in SENSITIVE:
            raise arg.refuse(
                f"config code is refused in {arg.owner} under the restricted policy: its value "
                f"({_SENSITIVE_VALUE[rule.kind]}) must be known before anything is built"
            )
        getattr(self, "_" + rule.kind.name.lower())(rule, value, arg)

    def _data(self, rule: ArgRule, value: Any, arg: _Arg) -> None:
        if isinstance(value, str):
            named = importable_name(value)
            if named is not None:
                raise arg.refuse(
                    f"'{value}' names {named}; {arg.owner} is plain data to the restricted policy, which refuses "
                    "names of Python objects there (a site that trusts it declares the argument in its catalog)"
                )
            if looks_like_escape(value):
                self.paths.check_read(value, arg.path)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                self._data(_DATA, item, arg.at(index))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                nested = GLOBAL_ARGS.get(key) if isinstance(key, str) else None
                inner = arg.at(str(key))
                self._value(nested or _DATA, item, _Arg(arg.label, str(key), inner.path) if nested else inner)

    def _word(self, rule: ArgRule, value: Any, arg: _Arg) -> None:
        """Keys and option words: any string; containers of them."""

    def _name(self, rule: ArgRule, value: Any, arg: _Arg) -> None:
        if value is None:
            return
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                self._name(rule, item, arg.at(index))
            return
        choices = f"{arg.owner} takes one of {rule.what} ({', '.join(rule.short_names)})"
        if isinstance(value, str):
            named = importable_name(value)
            if value in rule.allowed or value in rule.short_names:
                return
            lowered = {n.lower() for n in rule.short_names}
            if named is None and value.lower() in lowered:  # MONAI's last lookup: a lower-case table of its own
                return
            raise arg.refuse(f"'{value}' names {named}; {choices}" if named else f"{choices}; got '{value}'")
        target = value.target if isinstance(value, Planned) else type(value)
        if not any(
            class_name_of(target) == name or target.__name__ == name.rsplit(".", 1)[-1] for name in rule.allowed
        ):
            raise arg.refuse(f"{choices}; got {_described(value)}")

    def _flag_false(self, rule: ArgRule, value: Any, arg: _Arg) -> None:
        if isinstance(value, Planned) or bool(value):
            shown = _described(value) if isinstance(value, Planned) else repr(value)
            raise arg.refuse(
                f"'{arg.name}: {shown}' is refused by the restricted policy ({rule.what}): {arg.label} reads it as "
                "true; it must be false"
            )

    def _flag_true(self, rule: ArgRule, value: Any, arg: _Arg) -> None:
        if isinstance(value, Planned) or not bool(value):
            shown = _described(value) if isinstance(value, Planned) else repr(value)
            default = " (its default)" if arg.default else ""
            raise arg.refuse(
                f"'{arg.name}: {shown}'{default} is refused by the restricted policy ({rule.what}): "
                f"{arg.label} reads it as {'unknown' if isinstance(value, Planned) else 'false'}; it must be true"
            )

    def _refused(self, rule: ArgRule, value: Any, arg: _Arg) -> None:
        if not _is_empty(value):
            raise arg.refuse(f"'{arg.name}' is refused by the restricted policy: {rule.what}")

    def _path_write(self, rule: ArgRule, value: Any, arg: _Arg) -> None:
        if value is None:
            return  # nothing is written (PersistentDataset without cache_dir)
        if not isinstance(value, (str, os.PathLike)):
            raise arg.refuse(f"{arg.owner} is a folder it writes, got {_described(value)}")
        self.paths.check_write(os.fspath(value), arg.path, f"{arg.owner}" if arg.default else "")

    def _path_read(self, rule: ArgRule, value: Any, arg: _Arg) -> None:
        if value is None:
            return
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                self._path_read(rule, item, arg.at(index))
            return
        if not isinstance(value, (str, os.PathLike)):
            raise arg.refuse(f"{arg.owner} is a path it reads, got {_described(value)}")
        self.paths.check_read(os.fspath(value), arg.path)

    def _file_name(self, rule: ArgRule, value: Any, arg: _Arg) -> None:
        if value is None:
            return
        problem = file_name_problem(value) if isinstance(value, str) else f"it is {_described(value)}"
        if problem:
            raise arg.refuse(f"'{value}' cannot be part of a file name in {arg.owner}: {problem}")

    def _file_name_keys(self, rule: ArgRule, value: Any, arg: _Arg) -> None:
        if value is None:
            return
        if isinstance(value, Planned):
            raise arg.refuse(f"{arg.owner} must be written out in the config: its names become file names")
        names = list(value) if isinstance(value, (Mapping, list, tuple)) else [value]
        for name in names:
            self._file_name(rule, name, arg.at(str(name)) if isinstance(value, Mapping) else arg)
        if isinstance(value, Mapping):
            for key, item in value.items():
                self._data(_DATA, item, arg.at(str(key)))
