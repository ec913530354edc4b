"""Clara 4.0's implicit wiring made explicit: the ``@`` references Clara 4.1 configs spell out.

Clara 4.0 built each section's components by their role: the optimizer got the model's parameters, the
dataset the section's ``pre_transforms``, the trainer or evaluator every component of its section, a
``ValidationHandler`` the evaluator. Each function here adds one such reference where the config leaves
it out, never overriding an argument the config gives, and records a :class:`Change` for it.

The rules about one component (``name`` beside ``path``, batched-output lambdas, a handler's implied target,
custom code run as in MONAI 0.5) hold wherever the component sits: :func:`_walk` applies them to every
component of a section, in its arguments and in lists in its arguments, at any depth.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from clara_fl.config.clara40.changes import Change
from clara_fl.config.clara40.detect import LEGACY_HANDLER_CLASS, LEGACY_TRANSFORM_CLASS
from clara_fl.config.clara40.output_lambdas import rewrite_batched_lambda
from clara_fl.config.errors import ConfigError, json_path
from clara_fl.config.specs import HANDLER_KEYS, TRANSFORM_KEYS, ComponentSpec, class_name, is_component, parse_component
from clara_fl.config.variables import as_bool

__all__ = ["wire_section"]

TRAINER_ARGS = (
    ("train_data_loader", "dataloader"),
    ("network", "model"),
    ("loss_function", "loss"),
    ("optimizer", "optimizer"),
    ("inferer", "inferer"),
    ("postprocessing", "post_transforms"),
    ("key_train_metric", "key_metric"),
    ("additional_metrics", "additional_metrics"),
    ("train_handlers", "handlers"),
)
EVALUATOR_ARGS = (
    ("val_data_loader", "dataloader"),
    ("network", "model"),
    ("inferer", "inferer"),
    ("postprocessing", "post_transforms"),
    ("key_val_metric", "key_metric"),
    ("additional_metrics", "additional_metrics"),
    ("val_handlers", "handlers"),
)
# Handler class -> (argument, component it names) that Clara 4.0 filled in.
HANDLER_TARGETS: dict[str, tuple[str, str]] = {
    "ValidationHandler": ("validator", "evaluator"),
    "LrScheduleHandler": ("lr_scheduler", "lr_scheduler"),
    "SmartCacheHandler": ("smartcacher", "dataset"),
}
CHECKPOINT_DICTS = ("save_dict", "load_dict")
LIBRARY_PREFIXES = ("monai.", "torch.", "ignite.", "clara_fl.", "numpy.")
LEGACY_TRANSFORM = LEGACY_TRANSFORM_CLASS
LEGACY_HANDLER = LEGACY_HANDLER_CLASS
# After these, MONAI 0.5 items held tensors; before them, numpy arrays.
TO_TENSOR = frozenset(
    {"ToTensord", "ToTensorD", "ToTensorDict", "ToTensor", "EnsureTyped", "EnsureTypeD", "EnsureType"}
)
ENGINE_DATA_LAMBDAS = ("output_transform", "batch_transform")
_CONF_NAMES = frozenset({"train_conf", "conf"})


def _args(spec: dict[str, Any], path: str) -> dict[str, Any]:
    args = spec.setdefault("args", {})
    if not isinstance(args, dict):
        raise ConfigError(
            f"'args' must be an object of keyword arguments, got {type(args).__name__}", path=json_path(path, "args")
        )
    return args


def _accepted(spec: Mapping[str, Any], locate: Callable[[Mapping[str, Any]], Any]) -> Callable[[str], bool]:
    """Which keyword arguments the component's class takes (all, when it cannot be told here)."""
    try:
        target = locate(spec)
        if target is None:  # not imported before the policy has checked it
            return lambda name: True
        params = inspect.signature(target).parameters
    except Exception:  # an unknown class is reported, with its path, when the config is built
        return lambda name: True
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return lambda name: True
    return lambda name: name in params


def _add(spec: dict[str, Any], arg: str, value: Any, path: str, changes: list[Change]) -> None:
    args = _args(spec, path)
    if arg not in args:
        args[arg] = value
        changes.append(Change(json_path(path, "args", arg), f"added {value!r} (implicit in Clara 4.0)"))


def _one_component(spec: dict[str, Any], path: str, changes: list[Change]) -> None:
    """``name`` and ``path`` together: the full ``path`` names the class; ``name`` is dropped."""
    if "name" in spec and "path" in spec:
        name = spec.pop("name")
        changes.append(Change(json_path(path, "name"), f"removed {name!r}: 'path' {spec['path']!r} names the class"))


def _rewrite_output_transforms(spec: dict[str, Any], path: str, changes: list[Change]) -> None:
    """Engines decollate both ``state.output`` and ``state.batch`` since MONAI 0.6: both lambdas are rewritten."""
    args = spec.get("args")
    if not isinstance(args, dict):
        return
    for arg in ENGINE_DATA_LAMBDAS:
        code = args.get(arg)
        rewritten = rewrite_batched_lambda(code) if isinstance(code, str) else None
        if rewritten is not None:
            args[arg] = rewritten
            changes.append(Change(json_path(path, "args", arg), f"{code!r} -> {rewritten!r} (batched engine data)"))


def _handler_target(spec: dict[str, Any], parsed: ComponentSpec, known: set[str], changes: list[Change]) -> None:
    """A MONAI handler given the component Clara 4.0 gave it (``ValidationHandler`` the evaluator, ...)."""
    target = HANDLER_TARGETS.get(parsed.class_name)
    if target and target[1] in known:
        _add(spec, target[0], f"@{target[1]}", parsed.json_path, changes)


def _walk(
    value: Any, path: str, key: str, numpy_items: bool, in_custom: bool, known: set[str], changes: list[Change]
) -> Any:
    """``value`` with the rules about one component applied to every component in it, at any depth; returns what
    takes its place (a custom transform or handler comes back inside its compatibility wrapper).

    Args:
        value: a section item, or anything inside one (changed in place).
        path: its JSON path.
        key: the key it sits under (a list's items sit under the list's key): transforms and handlers are told
            by it (:data:`TRANSFORM_KEYS`, :data:`HANDLER_KEYS`).
        numpy_items: a transform here got numpy arrays in MONAI 0.5 (it is in, or inside, a ``pre_transforms``
            item before the first ToTensor).
        in_custom: inside a custom component's arguments (a Clara 4.0 custom class gets its nested component
            configs as plain dicts, docs/clara40.md): nothing there is wrapped.
        known: component names of every section.
        changes: where each rewrite is recorded.
    """
    if isinstance(value, list):
        for index, item in enumerate(value):
            if key in TRANSFORM_KEYS and is_component(item) and class_name(item) in TO_TENSOR:
                numpy_items = False
            value[index] = _walk(item, json_path(path, index), key, numpy_items, in_custom, known, changes)
        return value
    if not isinstance(value, dict):
        return value
    if not is_component(value):
        for name, item in value.items():
            value[name] = _walk(item, json_path(path, name), name, numpy_items, in_custom, known, changes)
        return value
    _one_component(value, path, changes)
    parsed = parse_component(value, path)
    assert parsed is not None  # a component stays one: only its 'name' may have gone
    _rewrite_output_transforms(value, path, changes)
    dotted = _custom_path(parsed)
    if dotted is None:
        _handler_target(value, parsed, known, changes)
    args = value.get("args")
    if isinstance(args, dict):
        inner = in_custom or dotted is not None
        for arg, item in args.items():
            args[arg] = _walk(item, json_path(path, "args", arg), arg, numpy_items, inner, known, changes)
    if dotted is None or in_custom:
        return value
    if key in TRANSFORM_KEYS:
        what = "numpy items and *_meta_dict keys" if numpy_items else "*_meta_dict keys"
        changes.append(Change(path, f"custom transform run as in MONAI 0.5 ({what})"))
        return _wrapped(value, parsed, LEGACY_TRANSFORM, "transform", to_numpy=numpy_items)
    if key in HANDLER_KEYS:
        changes.append(Change(path, "custom handler sees batched engine output"))
        return _wrapped(value, parsed, LEGACY_HANDLER, "handler")
    return value


def _metrics_list(section: dict[str, Any], prefix: str, changes: list[Change]) -> None:
    """``metrics`` with ``is_key_metric`` -> ``key_metric`` plus ``additional_metrics``."""
    metrics = section.get("metrics")
    if not isinstance(metrics, list):
        return
    if "key_metric" in section or "additional_metrics" in section:
        raise ConfigError(
            "give either 'metrics' (Clara 4.0) or 'key_metric'/'additional_metrics', not both",
            path=json_path(prefix, "metrics"),
        )
    flagged = []
    for index, spec in enumerate(metrics):
        if not isinstance(spec, dict):
            raise ConfigError(
                f"a metric must be a component object, got {type(spec).__name__}",
                path=json_path(prefix, "metrics", index),
            )
        flag = spec.pop("is_key_metric", False)
        if as_bool(flag) is None:
            raise ConfigError(
                f"'is_key_metric' must be true or false, got {flag!r}",
                path=json_path(prefix, "metrics", index, "is_key_metric"),
            )
        if as_bool(flag):
            flagged.append(index)
    del section["metrics"]
    if not metrics:
        changes.append(Change(json_path(prefix, "metrics"), "removed an empty metrics list"))
        return
    key_index = flagged[0] if flagged else 0
    section["key_metric"] = metrics[key_index]
    reason = "is_key_metric" if flagged else "the first metric (none has is_key_metric)"
    changes.append(Change(json_path(prefix, "metrics", key_index), f"-> {json_path(prefix, 'key_metric')} ({reason})"))
    others = [m for i, m in enumerate(metrics) if i != key_index]
    if others:
        section["additional_metrics"] = others
        changes.append(
            Change(json_path(prefix, "metrics"), f"other metrics -> {json_path(prefix, 'additional_metrics')}")
        )


def _data_pipeline(section: dict[str, Any], prefix: str, known: set[str], changes: list[Change]) -> None:
    optimizer, scheduler = section.get("optimizer"), section.get("lr_scheduler")
    if is_component(optimizer) and "model" in known:
        _add(optimizer, "params", "#@model.parameters()", json_path(prefix, "optimizer"), changes)
    if is_component(scheduler) and is_component(optimizer):
        _add(scheduler, "optimizer", "@optimizer", json_path(prefix, "lr_scheduler"), changes)
    dataset, loader = section.get("dataset"), section.get("dataloader")
    if is_component(dataset) and isinstance(section.get("pre_transforms"), list):
        _add(dataset, "transform", "@pre_transforms", json_path(prefix, "dataset"), changes)
    if is_component(loader) and is_component(dataset):
        _add(loader, "dataset", "@dataset", json_path(prefix, "dataloader"), changes)


def _handlers(section: dict[str, Any], prefix: str, changes: list[Change]) -> None:
    """``save_dict`` / ``load_dict`` given as lists of component names."""
    handlers = section.get("handlers")
    if not isinstance(handlers, list):
        return
    for index, spec in enumerate(handlers):
        if not is_component(spec):
            continue
        path = json_path(prefix, "handlers", index)
        args = spec.get("args")
        if not isinstance(args, dict):
            continue
        for key in CHECKPOINT_DICTS:
            names = args.get(key)
            if isinstance(names, list) and all(isinstance(n, str) for n in names):
                args[key] = {n: "@conf" if n in _CONF_NAMES else f"@{n}" for n in names}
                # A train config's saver keeps the config too, as Clara 4.1 does: export rebuilds the network from it.
                if (
                    key == "save_dict"
                    and prefix
                    and class_name(spec) == "CheckpointSaver"
                    and not _CONF_NAMES & {*names}
                ):
                    args[key]["train_conf"] = "@conf"
                changes.append(Change(json_path(path, "args", key), f"{names!r} -> {args[key]!r}"))


def _engine(
    section: dict[str, Any],
    prefix: str,
    known: set[str],
    config_globals: Mapping[str, Any],
    locate: Callable[[Mapping[str, Any]], Any],
    changes: list[Change],
) -> None:
    for key, wiring in (("trainer", TRAINER_ARGS), ("evaluator", EVALUATOR_ARGS)):
        spec = section.get(key)
        if not is_component(spec):
            continue
        accepts = _accepted(spec, locate)
        path = json_path(prefix, key)
        for arg, component in wiring:
            # The network may live in another section (a train config's validate uses train's model).
            present = component in section or (component == "model" and "model" in known)
            if present and accepts(arg):
                _add(spec, arg, f"@{component}", path, changes)
        if "amp" in config_globals and accepts("amp"):
            _add(spec, "amp", "{amp}", path, changes)


def _custom_path(spec: ComponentSpec) -> str | None:
    """The dotted ``path`` (without alias) of a BYOC component (not a library class), else None."""
    dotted = spec.path
    if dotted is None or dotted.startswith(LIBRARY_PREFIXES) or "." not in dotted:
        return None
    return dotted


def _wrapped(
    spec: dict[str, Any], parsed: ComponentSpec, wrapper_class: str, argument: str, **extra: Any
) -> dict[str, Any]:
    """``spec`` (a BYOC component) inside a compatibility wrapper component that keeps its alias, or its class
    name as alias, so a ``ref`` still finds it."""
    inner = {k: v for k, v in spec.items() if k not in ("disabled", "rank")}
    inner["path"] = parsed.target
    wrapper: dict[str, Any] = {"path": f"{wrapper_class}#{parsed.alias or parsed.class_name}"}
    wrapper.update({k: spec[k] for k in ("disabled", "rank") if k in spec})
    wrapper["args"] = {argument: inner, **extra}
    return wrapper


def wire_section(
    section: dict[str, Any],
    prefix: str,
    known: set[str],
    config_globals: Mapping[str, Any],
    locate: Callable[[Mapping[str, Any]], Any],
    changes: list[Change],
) -> None:
    """Make one section's implicit Clara 4.0 wiring explicit, in place.

    Args:
        section: the section's components (changed in place).
        prefix: its JSON path (``"train"``, ``"validate"`` or ``""`` for a flat config).
        known: component names of every section (``@name`` resolves across sections).
        config_globals: the config's global variables (``amp`` is passed to the engines when defined).
        locate: the class a component spec names (raises when it cannot be found; None when it may not be
            imported before the config is checked).
        changes: where each rewrite is recorded.

    Raises:
        ConfigError: a 4.0 construct with a shape Clara 4.0 did not accept either.
    """
    for key, value in section.items():
        where = json_path(prefix, key)
        section[key] = _walk(value, where, key, key == "pre_transforms", False, known, changes)
    _metrics_list(section, prefix, changes)
    known |= {"key_metric", "additional_metrics"} & set(section)
    _data_pipeline(section, prefix, known, changes)
    _handlers(section, prefix, changes)
    _engine(section, prefix, known, config_globals, locate, changes)
