"""A site's own catalog entries: the ``"catalog"`` key of its ``clara_fl_site.json``.

Format (every key optional but ``classes``)::

    {"classes": {
        "monai.transforms.Foo":   {"args": {"out": "path-write", "keys": "word"}},
        "mylib.nets.MyNet":       {},
        "monai.transforms.Bar":   {"args": {"reader": {"kind": "name", "allowed": ["monai.data.NibabelReader"]}},
                                   "forwards_to": "monai.transforms.Baz", "extra": "data"}
    }}

A class is named by its dotted path (where it is defined or where its library exports it). Each argument's
kind is one of ``data``, ``word``, ``path-read``, ``path-write``, ``file-name``, ``file-name-keys``,
``name`` (with ``allowed``: dotted names), ``flag-false``, ``flag-true``, ``refused`` (see
:class:`clara_fl.config.policy.kinds.Kind`); arguments not named are data. ``forwards_to`` names the class
its ``**kwargs`` go to (their parameters are then data); ``extra`` is the kind of any other ``**kwargs``
keyword (by default refused). An entry for a class the built-in catalog has replaces the rules it names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clara_fl.config.errors import ConfigError, did_you_mean, json_path
from clara_fl.config.policy.kinds import ArgRule, ClassRule, Kind

__all__ = ["SITE_FILE", "parse_site_catalog"]

SITE_FILE = "clara_fl_site.json"
_KINDS = {kind.value: kind for kind in Kind}
_ENTRY_KEYS = frozenset({"args", "forwards_to", "extra", "why"})


def _fail(message: str, *path: str | int) -> ConfigError:
    return ConfigError(message, file=SITE_FILE, path=json_path("catalog", *path))


def _kind(text: Any, *path: str | int) -> Kind:
    if not isinstance(text, str) or text not in _KINDS:
        raise _fail(
            f"unknown argument kind {text!r}{did_you_mean(str(text), _KINDS)}; one of {', '.join(_KINDS)}", *path
        )
    return _KINDS[text]


def _arg_rule(value: Any, *path: str | int) -> ArgRule:
    if isinstance(value, str):
        kind = _kind(value, *path)
        if kind is Kind.NAME:
            raise _fail('a "name" argument needs {"kind": "name", "allowed": [dotted names]}', *path)
        return ArgRule(kind)
    if not isinstance(value, Mapping):
        raise _fail(f"an argument rule is a kind or an object with 'kind', got {type(value).__name__}", *path)
    kind = _kind(value.get("kind"), *path, "kind")
    allowed = value.get("allowed", [])
    if not isinstance(allowed, list) or not all(isinstance(a, str) and a for a in allowed):
        raise _fail("'allowed' must be a list of dotted names", *path, "allowed")
    if kind is Kind.NAME and not allowed:
        raise _fail("a 'name' argument needs 'allowed': the dotted names it may take", *path, "allowed")
    return ArgRule(kind, tuple(allowed), str(value.get("what") or "the objects the site allows"))


def _class_rule(entry: Any, name: str) -> ClassRule:
    if not isinstance(entry, Mapping):
        raise _fail(f"a class entry must be an object, got {type(entry).__name__}", "classes", name)
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise _fail(f"unknown key '{unknown[0]}'{did_you_mean(unknown[0], _ENTRY_KEYS)}", "classes", name)
    args = entry.get("args", {})
    if not isinstance(args, Mapping):
        raise _fail("'args' must be an object of argument: kind", "classes", name, "args")
    forwards_to = entry.get("forwards_to", "")
    if not isinstance(forwards_to, str):
        raise _fail("'forwards_to' must be a dotted class name", "classes", name, "forwards_to")
    extra = entry.get("extra")
    return ClassRule(
        args={str(k): _arg_rule(v, "classes", name, "args", str(k)) for k, v in args.items()},
        forwards_to=forwards_to,
        extra=None if extra is None else _arg_rule(extra, "classes", name, "extra"),
        why=str(entry.get("why") or "the site's catalog admits it"),
    )


def parse_site_catalog(catalog: Mapping[str, Any]) -> dict[str, ClassRule]:
    """The class entries of a site's ``"catalog"``, by dotted class name.

    Args:
        catalog: the ``"catalog"`` value of the site file (empty: no entries).

    Raises:
        ConfigError: an entry in a shape this format does not have, naming the site file and the entry.
    """
    if not catalog:
        return {}
    if not isinstance(catalog, Mapping):
        raise _fail(f"the catalog must be an object with 'classes', got {type(catalog).__name__}")
    unknown = sorted(set(catalog) - {"classes"})
    if unknown:
        raise _fail(f"unknown key '{unknown[0]}' (the catalog has 'classes')")
    classes = catalog.get("classes", {})
    if not isinstance(classes, Mapping):
        raise _fail("'classes' must be an object of dotted class name: entry", "classes")
    for name in classes:
        if not isinstance(name, str) or "." not in name:
            raise _fail(f"a class is named by its dotted path ('monai.transforms.Foo'), got {name!r}", "classes")
    return {name: _class_rule(entry, name) for name, entry in classes.items()}
