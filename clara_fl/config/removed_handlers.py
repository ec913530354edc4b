"""Handlers MONAI removed whose work moved into post-transforms: TransformInverter and SegmentationSaver.

Both ran once an iteration was complete, on the post-processed output; their replacements (``Invertd`` and
``SaveImaged``) are transforms, so each such handler becomes a transform appended to the same section's
``post_transforms``, in the handlers' order, with its arguments renamed. Arguments that only fed the
handler machinery (``loader``, ``batch_transform``, ``*_meta_dict`` keys now carried by MetaTensors) are
dropped, each with a logged change.
"""

from __future__ import annotations

import re
from typing import Any

from clara_fl.config.clara40.changes import Change
from clara_fl.config.clara40.detect import sections_of
from clara_fl.config.errors import ConfigError, json_path
from clara_fl.config.specs import class_name

__all__ = ["move_removed_handlers"]

_INVERTER_RENAMES = {"output_keys": "keys", "batch_keys": "orig_keys"}
_INVERTER_KEPT = ("transform", "nearest_interp", "to_tensor", "device", "post_func")
_SAVER_KEPT = (
    "output_dir",
    "output_postfix",
    "output_ext",
    "resample",
    "mode",
    "padding_mode",
    "scale",
    "dtype",
    "output_dtype",
    "squeeze_end_dims",
    "data_root_dir",
    "separate_folder",
    "print_log",
)
_QUOTED_KEY = re.compile(r"""\[\s*\[?\s*['"](\w+)['"]""")
_ENGINE_ARG = {"trainer": "postprocessing", "evaluator": "postprocessing"}


def _inverter(args: dict[str, Any], path: str, changes: list[Change]) -> list[dict[str, Any]]:
    new: dict[str, Any] = {"keys": args.get("output_keys", "pred"), "orig_keys": args.get("batch_keys", "image")}
    new.update({k: args[k] for k in _INVERTER_KEPT if k in args})
    new.setdefault("transform", "@pre_transforms")
    dropped = sorted(set(args) - set(_INVERTER_RENAMES) - set(_INVERTER_KEPT) - {"postfix"})
    if dropped:
        changes.append(Change(json_path(path, "args"), f"dropped {dropped} (not needed by Invertd)"))
    postfix = args.get("postfix")
    if not postfix:  # MONAI 0.7+: inverted in place
        return [{"name": "Invertd", "args": new}]
    keys = new["keys"] if isinstance(new["keys"], list) else [new["keys"]]
    names = [f"{k}_{postfix}" for k in keys]  # MONAI 0.6 wrote the inverse beside the original
    new["keys"] = names
    new["orig_keys"] = new["orig_keys"] if isinstance(new["orig_keys"], list) else [new["orig_keys"]] * len(keys)
    return [
        {"name": "CopyItemsd", "args": {"keys": keys, "times": 1, "names": names}},
        {"name": "Invertd", "args": new},
    ]


def _saver(args: dict[str, Any], path: str, changes: list[Change]) -> list[dict[str, Any]]:
    code = args.get("output_transform")
    match = _QUOTED_KEY.search(code) if isinstance(code, str) else None
    new: dict[str, Any] = {"keys": match.group(1) if match else "pred"}
    new.update({k: args[k] for k in _SAVER_KEPT if k in args})
    dropped = sorted(set(args) - set(_SAVER_KEPT))
    if dropped:
        changes.append(
            Change(json_path(path, "args"), f"dropped {dropped} (SaveImaged reads the image metadata itself)")
        )
    return [{"name": "SaveImaged", "args": new}]


_MOVES = {"TransformInverter": _inverter, "SegmentationSaver": _saver}


def _move(section: dict[str, Any], prefix: str, changes: list[Change]) -> None:
    handlers = section.get("handlers")
    if not isinstance(handlers, list) or not any(isinstance(h, dict) and class_name(h) in _MOVES for h in handlers):
        return
    if not isinstance(section.setdefault("post_transforms", []), list):
        raise ConfigError("'post_transforms' must be a list", path=json_path(prefix, "post_transforms"))
    kept = []
    for index, spec in enumerate(handlers):
        move = _MOVES.get(class_name(spec)) if isinstance(spec, dict) else None
        if move is None:
            kept.append(spec)
            continue
        path = json_path(prefix, "handlers", index)
        args = spec.get("args", {})
        if not isinstance(args, dict):
            raise ConfigError("'args' must be an object of keyword arguments", path=json_path(path, "args"))
        added = move(dict(args), path, changes)
        if "disabled" in spec:
            for transform in added:
                transform["disabled"] = spec["disabled"]
        start = len(section["post_transforms"])
        section["post_transforms"].extend(added)
        names = ", ".join(t["name"] for t in added)
        where = json_path(prefix, "post_transforms", start)
        changes.append(Change(path, f"{class_name(spec)} (removed from MONAI) -> {names} at {where}"))
    section["handlers"] = kept
    for key, arg in _ENGINE_ARG.items():
        engine = section.get(key)
        if isinstance(engine, dict) and isinstance(engine.setdefault("args", {}), dict) and arg not in engine["args"]:
            engine["args"][arg] = "@post_transforms"
            changes.append(Change(json_path(prefix, key, "args", arg), "added '@post_transforms'"))


def move_removed_handlers(config: dict[str, Any], file: str | None = None) -> list[Change]:
    """Move TransformInverter/SegmentationSaver handlers into post_transforms, in place; returns the changes.

    Raises:
        ConfigError: such a handler or its section has a shape that cannot be moved.
    """
    changes: list[Change] = []
    for prefix, section in sections_of(config).items():
        try:
            _move(section, prefix, changes)  # type: ignore[arg-type]
        except ConfigError as e:
            raise e.located(file) from e.__cause__
    return changes
