"""The classes the restricted policy builds: the built-in catalog, its families and a site's own entries."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any

from clara_fl.config.policy.builtin import CLASSES, FAMILIES, GLOBAL_ARGS, PATH_LIKE, is_word_argument
from clara_fl.config.policy.kinds import ArgRule, ClassRule, Family, Kind
from clara_fl.config.policy.site import parse_site_catalog

__all__ = ["Catalog", "class_name_of", "parameters_of"]

_WORD = ArgRule(Kind.WORD)
_DATA = ArgRule(Kind.DATA)
_PATH_LIKE = ArgRule(
    Kind.REFUSED, what="its name says it is a path, a file or a URL; the site's catalog can declare it"
)


def class_name_of(target: Any) -> str:
    """``monai.transforms.io.dictionary.LoadImaged``: where a class is defined."""
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', getattr(target, '__name__', ''))}"


def _exported(dotted: str) -> Any:
    """The object a dotted name refers to, when its module is imported already (nothing is imported here)."""
    module_name, _, attr = dotted.rpartition(".")
    module = sys.modules.get(module_name)
    return getattr(module, attr, None) if module is not None else None


class Catalog:
    """What the restricted policy builds and how it judges each argument.

    Args:
        site: the site file's ``"catalog"`` (see :mod:`clara_fl.config.policy.site`).

    Raises:
        ConfigError: the site's catalog is malformed.
    """

    def __init__(self, site: Mapping[str, Any] | None = None) -> None:
        self.site = parse_site_catalog(site or {})
        self.classes: dict[str, ClassRule] = dict(CLASSES)
        for name, rule in self.site.items():
            self.classes[name] = self.classes[name].merged(rule) if name in self.classes else rule
        self.families: tuple[Family, ...] = FAMILIES
        self._found: dict[int, tuple[Any, ClassRule]] = {}
        self._trees = tuple(sorted({name.rpartition(".")[0] for name in self.classes} | {f.module for f in FAMILIES}))

    # -- modules and classes --------------------------------------------------------------------------

    def module_trees(self) -> tuple[str, ...]:
        """The module trees whose modules may be imported to find a ``path`` class: a catalogued class's
        package (``monai.transforms`` for ``monai.transforms.LoadImaged``) and every family's tree."""
        return self._trees

    def rule_for(self, target: Any) -> ClassRule | None:
        """The rule of a class: its catalog entry, else the rule of its family; None when it is neither."""
        found = self._found.get(id(target))
        if found is not None and found[0] is target:
            return found[1]
        rule = self._lookup(target)
        if rule is not None:  # a miss may become a hit once the class's exporting module is imported
            self._found[id(target)] = (target, rule)
        return rule

    def _lookup(self, target: Any) -> ClassRule | None:
        defined = class_name_of(target)
        for name, rule in self.classes.items():
            if name == defined or _exported(name) is target:
                return rule
        module_name = getattr(target, "__module__", "") or ""
        class_name = getattr(target, "__name__", "")
        family = next((f for f in self.families if f.holds(module_name, class_name)), None)
        return ClassRule(why=family.why, generic=True) if family is not None else None

    # -- arguments ------------------------------------------------------------------------------------

    @staticmethod
    def argument_rule(rule: ClassRule, name: str, params: Mapping[str, inspect.Parameter] | None) -> ArgRule | None:
        """How argument ``name`` of a class with ``rule`` and signature ``params`` is judged; None when it is a
        ``**kwargs`` keyword that is refused."""
        if name in rule.args:
            return rule.args[name]
        if name in GLOBAL_ARGS:
            return GLOBAL_ARGS[name]
        if params is not None and name not in params:
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                return _DATA  # not an argument of the class at all: the resolver's signature check names it
            if rule.forwards_to and name in (parameters_of(_exported(rule.forwards_to)) or {}):
                return _DATA
            return rule.extra
        if rule.generic and PATH_LIKE.search(name):
            return _PATH_LIKE
        return _WORD if is_word_argument(name) else _DATA


def parameters_of(target: Any) -> Mapping[str, inspect.Parameter] | None:
    """The parameters of a class's signature (its ``__signature__`` wins); None when it has none to tell."""
    try:
        return inspect.signature(target).parameters if target is not None else None
    except (TypeError, ValueError):
        return None
