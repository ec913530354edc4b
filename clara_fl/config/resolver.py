"""Building the components of a variable-substituted Clara config.

A Clara config has sections (``train`` and ``validate``, or one flat section for validation and
inference configs) whose keys are components. ``@name`` finds a key in the current section first,
then in the others (train handlers use ``@evaluator``, the evaluator uses ``@model``); ``@conf`` is
the whole config. Each key is built once and shared by everything that refers to it.

The same walk runs twice: first as a dry run that checks names, arguments, references, aliases
and data files without building anything, then for real. So a bad config fails in a second,
before any dataset is cached or any file is written. Under the restricted policy each component's
class is admitted and its resolved arguments are judged (:mod:`clara_fl.config.policy`) in both
walks: in the dry run on what the config resolves to, and again just before each construction.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from clara_fl.config import compat
from clara_fl.config.context import BuildContext
from clara_fl.config.errors import ConfigError, did_you_mean, json_path, located_failure
from clara_fl.config.expressions import references_in
from clara_fl.config.locator import locate_name, locate_path
from clara_fl.config.model_hints import final_model_hint
from clara_fl.config.policy import Planned as _Planned
from clara_fl.config.restrictions import from_a_custom_folder
from clara_fl.config.specs import (
    DATASET_KEYS,
    TRANSFORM_KEYS,
    TRANSFORM_LISTS,
    ComponentSpec,
    check_component_keys,
    component_label,
    config_sections,
    find_ref,
    is_component,
    is_component_list,
    is_disabled,
    is_model_entry,
    parse_component,
    position_key,
    rank_of,
)
from clara_fl.config.variables import is_code

__all__ = ["BuildContext", "ConfigResolver", "TrainConf", "component_label"]

logger = logging.getLogger(__name__)


class TrainConf:
    """The resolved config as a checkpointable object, so ``"train_conf": "@conf"`` works in save_dict.

    Deliberately not a Mapping: ignite walks into mappings in save_dict looking for state_dict owners.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def __getitem__(self, key: str) -> Any:
        return self.config[key]

    def state_dict(self) -> dict:
        return self.config

    def load_state_dict(self, state: Mapping) -> None:
        self.config = dict(state)


class ConfigResolver:
    """Builds (or, with ``dry_run``, checks) the components of one substituted config."""

    def __init__(
        self,
        config: Mapping[str, Any],
        file: str | None = None,
        context: BuildContext | None = None,
        variable_names: set[str] | frozenset[str] = frozenset(),
        dry_run: bool = False,
    ) -> None:
        self.config = config
        self.file = file
        self.context = context or BuildContext()
        self.dry_run = dry_run
        self.sections = self._find_sections(config, variable_names)
        self._cache: dict[str, Any] = {}
        self._building: list[str] = []
        # id(built object) -> (JSON path, class name): run-time failures name the config item (workflows/failures.py)
        self.component_paths: dict[int, tuple[str, str]] = {}

    # -- sections and references -------------------------------------------------------------

    @staticmethod
    def _find_sections(config: Mapping[str, Any], variable_names: set[str] | frozenset[str]) -> dict[str, Mapping]:
        """``{"train": ..., "validate": ..., "": other top-level objects}`` for a train config, ``{"": config}`` for a
        flat one; neither holds ``determinism`` or the plain variables (object and list variables stay referable)."""
        plain = {k for k in variable_names if not isinstance(config.get(k), (dict, list))}
        return config_sections(config, skip={"determinism", *plain})

    def names(self) -> list[str]:
        return sorted({k for section in self.sections.values() for k in section} | {"conf"})

    def _owner(self, name: str, section: str) -> str:
        if name in self.sections.get(section, {}):
            return section
        for other, content in self.sections.items():
            if name in content:
                return other
        raise ConfigError(f"unknown reference '@{name}'{did_you_mean(name, self.names(), prefix='@')}")

    def get(self, name: str, section: str | None = None) -> Any:
        """The built component ``@name`` as seen from ``section`` (default: first section holding it)."""
        if name == "conf":
            return _Planned(TrainConf, "conf") if self.dry_run else TrainConf(self.config)
        owner = self._owner(name, section if section is not None else next(iter(self.sections)))
        key = json_path(owner, name)
        if key in self._cache:
            return self._cache[key]
        if key in self._building:
            cycle = " -> ".join(self._building[self._building.index(key) :] + [key])
            raise ConfigError(f"circular reference: {cycle}", file=self.file, path=key)
        self._building.append(key)
        try:
            value = self._build_section_item(owner, name, self.sections[owner][name])
        finally:
            self._building.pop()
        self._cache[key] = value
        return value

    def build_all(self) -> dict[str, Any]:
        """Build (or check) every component of every section; returns them keyed by JSON path."""
        for section, content in self.sections.items():
            for name in content:
                self.get(name, section)
        return dict(self._cache)

    # -- values --------------------------------------------------------------------------------

    def _build_section_item(self, section: str, name: str, value: Any) -> Any:
        path = json_path(section, name)
        if name == "model" and is_model_entry(value):
            return self._load_model_entry(value, path)
        if name == "key_metric" and is_component(value):
            built = self._resolve(value, path, section)
            return {} if built is None else {component_label(value): built}
        if name == "additional_metrics" and isinstance(value, list):
            metrics = {}
            for index, spec in enumerate(value):
                built = self._resolve(spec, json_path(path, index), section)
                if built is not None:
                    metrics[component_label(spec)] = built
            return metrics
        built = self._resolve(value, path, section)
        if name in TRANSFORM_LISTS and isinstance(built, list) and not self.dry_run:
            from monai.transforms import Compose

            composed = Compose(built)
            self.component_paths[id(composed)] = (path, "Compose")
            return composed
        if not self.dry_run:
            built = self.context.runtime.place(name, built, self.context)
        return built

    def _resolve(self, value: Any, path: str, section: str) -> Any:
        try:
            if isinstance(value, str):
                return self._resolve_string(value, path, section)
            if isinstance(value, list):
                return self._resolve_list(value, path, section)
            if isinstance(value, dict):
                if "ref" in value:
                    return self._resolve_ref(value, path, section)
                spec = parse_component(value, path)
                if spec is not None:
                    return self._build_component(spec, value, section)
                return {k: self._resolve(v, json_path(path, k), section) for k, v in value.items()}
            return value
        except ConfigError as e:
            e.located(self.file, path)
            raise
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
            # A value of a shape nothing here expects; say where, not how Python tripped over it.
            raise ConfigError(
                f"invalid value {_short(value)} ({type(e).__name__}: {e})", file=self.file, path=path
            ) from e

    def _resolve_string(self, value: str, path: str, section: str) -> Any:
        if value.startswith("@") and value[1:].isidentifier():
            return self.get(value[1:], section)
        if is_code(value):
            for ref in references_in(value):
                if ref != "conf":
                    self._owner(ref, section)  # an unknown name fails here, in the dry run too
            if self.dry_run:
                self.context.evaluator.check(value)
                return _Planned(value, path, code=True)
            return self.context.evaluator.evaluate(value, lambda ref: self.get(ref, section))
        return value

    def _resolve_list(self, value: list, path: str, section: str) -> list:
        items = []
        for index, item in enumerate(value):
            item_path = json_path(path, index)
            if isinstance(item, dict) and is_disabled(item, item_path):
                continue
            key = item_path
            if key not in self._cache:
                self._cache[key] = self._resolve(item, item_path, section)
            if isinstance(item, dict) and rank_of(item, item_path) not in (None, self.context.rank):
                continue  # built on every rank (collectives in constructors), used on its own rank only
            items.append(self._cache[key])
        return items

    # -- transform references ------------------------------------------------------------------

    def _resolve_ref(self, value: Mapping[str, Any], path: str, section: str) -> Any:
        ref = value["ref"]
        if not isinstance(ref, str) or not ref:
            raise ConfigError(
                f"'ref' must name a train transform by class name or alias, got {_short(ref)}",
                path=json_path(path, "ref"),
            )
        extra = set(value) - {"ref", "disabled", "rank"}
        if extra:
            raise ConfigError(
                f"a 'ref' item takes no other keys, found {sorted(extra)}: it re-uses the train transform as is"
            )
        if "train" not in self.sections or section == "train":
            raise ConfigError(
                f"'ref' re-uses a transform of the train section, which this config does not have (ref '{ref}')"
            )
        list_name, index = find_ref(ref, self.sections["train"])
        match = json_path("train", list_name, index)
        if match not in self._cache:
            spec = self.sections["train"][list_name][index]
            if is_disabled(spec, match):
                raise ConfigError(f"ref '{ref}' points at {match}, which is disabled")
            self._cache[match] = self._resolve(spec, match, "train")
        return self._cache[match]

    # -- components ----------------------------------------------------------------------------

    def _build_component(self, spec: ComponentSpec, written: Mapping[str, Any], section: str) -> Any:
        """Build (or plan) the component ``spec``; ``written`` is it as the config writes it (its other keys)."""
        path = spec.json_path
        label = written.get("log_label")
        if label is not None and not isinstance(label, str):
            raise ConfigError(f"'log_label' must be a string, got {_short(label)}", path=json_path(path, "log_label"))
        restrictions = self.context.restrictions
        if restrictions is not None:  # metric names become file names (MetricsSaver's <name>_raw.csv)
            restrictions.check_file_name(label, json_path(path, "log_label"))
        check_component_keys(written)
        if spec.disabled:
            return None
        name, target = self._target(spec)
        raw_args = dict(spec.args)
        args = {**self._legacy_defaults(spec), **compat.translate_args(name, target, raw_args)}
        plain = self._takes_plain_component_configs(target)
        args = {
            k: v
            if plain and (is_component(v) or is_component_list(v))
            else self._resolve(v, json_path(path, "args", k), section)
            for k, v in args.items()
        }
        if restrictions is not None:  # the resolved values, in the dry run and again just before building
            restrictions.judge_args(target, name, args, path)
        missing = compat.missing_requirement(getattr(target, "__name__", name), raw_args)
        if missing:
            raise missing.located(self.file, path)
        if any(k in written for k in DATASET_KEYS):
            args["data"] = self._datalist(written, path)
        args = self.context.runtime.adapt_arguments(target, args, path, self.context, self.dry_run)
        self._check_signature(name, target, args, path)
        load_path = args.get("load_path")
        if isinstance(load_path, str) and not os.path.isfile(load_path):
            hint = final_model_hint(load_path, "load_path", self.context.mmar_root)
            raise ConfigError(
                f"checkpoint to load not found: {load_path}"
                + (hint or " (fine-tuning needs a trained model; train first or set dont_load_ckpt_model=True)"),
                path=json_path(path, "args", "load_path"),
            )
        if self.dry_run:
            return _Planned(target, path)
        running = set(threading.enumerate())
        try:
            built = target(**args)
            self.component_paths[id(built)] = (path, name)
            if self._may_be_numpy_era(target, path):
                where = ": ".join(p for p in (self.file, f"{path} ({name})") if p)
                built = self.context.runtime.custom_transform(built, where, self.context)
                self.component_paths[id(built)] = (path, name)
            return built
        except ConfigError:
            _wait_for_pool_workers(running)
            raise
        except Exception as e:
            _wait_for_pool_workers(running)
            raise ConfigError(f"building {name} failed: {self._failure_while_building(e)}", component=name) from e

    def _failure_while_building(self, error: Exception) -> str:
        """What failed while a component was built. A component built before it and running inside its
        construction (a transform of a dataset that caches its cases) is named by its config item and the case,
        as run-time failures are; MONAI's own message names only an object's address."""
        located = located_failure(error)
        if located is None:
            return f"{type(error).__name__}: {error}"
        return located.removeprefix(f"{self.file}: ") if self.file else located

    def _takes_plain_component_configs(self, target: Any) -> bool:
        """Clara 4.0 handed a custom component its nested component configs (a component, or a list of them) as
        plain dicts; a Clara 4.0 config's BYOC classes (from the MMAR's custom/ folder) still get them so."""
        return self.context.clara40 and _from_a_custom_folder(target)

    def _may_be_numpy_era(self, target: Any, path: str) -> bool:
        """A Clara 4.1 config's BYOC transform: it may be code written for MONAI 0.8 and earlier (numpy arrays)."""
        # Only classes from the MMAR's custom/ folder: MONAI's transforms and installed packages are written for the
        # MONAI installed beside them, so a failure of theirs is a real one and is never retried. A Clara 4.0
        # config's custom transforms are wrapped when the config is read (clara40.wiring), so they are left alone.
        return not self.context.clara40 and position_key(path) in TRANSFORM_KEYS and _from_a_custom_folder(target)

    def _legacy_defaults(self, spec: ComponentSpec) -> dict[str, Any]:
        legacy = compat.LEGACY_NAMES.get(spec.name) if spec.name is not None else None
        return dict(legacy.defaults) if legacy else {}

    def _target(self, spec: ComponentSpec) -> tuple[str, Callable]:
        restrictions = self.context.restrictions
        where = json_path(spec.json_path, spec.key)
        if spec.path is not None:
            dotted = spec.path
            try:
                if restrictions is not None:
                    restrictions.check_module(dotted.rpartition(".")[0])
                target = locate_path(dotted)
                if restrictions is not None:
                    restrictions.check_target(target, dotted)
                return spec.class_name, target
            except ConfigError as e:
                e.located(self.file, where)
                raise
        name = spec.target
        removed = compat.removed_name_error(name)
        if removed:
            raise removed.located(self.file, where)
        legacy = compat.LEGACY_NAMES.get(name)
        try:
            target = locate_name(legacy.replacement if legacy else name, self.context.runtime.search_modules)
            if restrictions is not None:
                restrictions.check_target(target, name)
            return name, target
        except ConfigError as e:
            e.located(self.file, where)
            raise

    def _datalist(self, spec: Mapping[str, Any], path: str) -> Any:
        if "data_list_file_path" not in spec:
            raise ConfigError("'data_list_file_path' is required with the other data_list keys", path=path)
        root = self.context.mmar_root or os.getcwd()
        list_path = os.path.join(root, str(spec["data_list_file_path"]))
        base_dir = spec.get("data_file_base_dir")
        base_dir = os.path.join(root, str(base_dir)) if base_dir else None
        if self.context.restrictions is not None:
            self.context.restrictions.check_data(list_path, json_path(path, "data_list_file_path"))
            if base_dir:
                self.context.restrictions.check_data(base_dir, json_path(path, "data_file_base_dir"))
        try:
            return self.context.runtime.load_datalist(list_path, str(spec.get("data_list_key", "training")), base_dir)
        except ConfigError as e:
            e.message = f"{e.message} (datalist {e.file}{': ' + e.path if e.path else ''})"
            e.file, e.path = self.file, json_path(path, "data_list_file_path")
            raise e

    def _check_signature(self, name: str, target: Callable, args: Mapping[str, Any], path: str) -> None:
        params = _parameters(target)
        if params is None:
            return
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        named = [
            p for p in params if params[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if not accepts_any:
            for arg in args:
                if arg not in params:
                    raise ConfigError(
                        f"unexpected argument '{arg}' for {name}{did_you_mean(arg, named)}; "
                        f"it accepts: {', '.join(named)}",
                        path=json_path(path, "args", arg),
                    )
        missing = [
            p
            for p in named
            if params[p].default is inspect.Parameter.empty
            and params[p].kind is not inspect.Parameter.POSITIONAL_ONLY
            and p not in args
        ]
        if missing:
            raise ConfigError(
                f"{name} needs argument(s) {', '.join(repr(m) for m in missing)} in 'args'",
                path=json_path(path, "args"),
            )

    # -- validation/inference model entries ------------------------------------------------------

    def _load_model_entry(self, value: Any, path: str) -> Any:
        """``[{"ts_path": ...}, {"ckpt_path": ...}]``: the first enabled entry wins."""
        entries = value if isinstance(value, list) else [value]
        for index, entry in enumerate(entries):
            entry_path = json_path(path, index) if isinstance(value, list) else path
            try:
                if is_disabled(entry, entry_path):
                    continue
            except ConfigError as e:
                e.located(self.file)
                raise
            if is_component(entry):  # a network definition; its weights come from a CheckpointLoader handler
                built = self._resolve(entry, entry_path, "")
                return built if self.dry_run else self.context.runtime.place("model", built, self.context)
            kind = "ts_path" if "ts_path" in entry else "ckpt_path"
            file = str(entry[kind])
            if not os.path.isabs(file) and self.context.mmar_root:
                file = os.path.join(self.context.mmar_root, file)
            if self.context.restrictions is not None:
                try:
                    self.context.restrictions.check_read(file, json_path(entry_path, kind), what="model file")
                except ConfigError as e:
                    e.located(self.file)
                    raise
            if not os.path.isfile(file):
                hint = final_model_hint(file, kind, self.context.mmar_root)
                raise ConfigError(
                    f"model file not found: {file}{hint}", file=self.file, path=json_path(entry_path, kind)
                )
            if self.dry_run:
                return _Planned(kind, entry_path)
            try:
                return self.context.runtime.load_model(kind, file, self.context)
            except ConfigError as e:
                e.located(self.file, json_path(entry_path, kind))
                raise
        raise ConfigError(
            "every model entry is disabled; "
            "enable one with --set dont_load_ts_model=False or dont_load_ckpt_model=False",
            file=self.file,
            path=path,
        )


def _from_a_custom_folder(target: Any) -> bool:
    """Whether ``target`` was defined in an MMAR's custom/ folder (BYOC code), not in an installed package."""
    file = getattr(inspect.getmodule(target), "__file__", None)
    return bool(file) and from_a_custom_folder(str(file), getattr(target, "__module__", ""))


def _parameters(target: Any) -> dict[str, inspect.Parameter] | None:
    """Keyword parameters of ``target`` (a class's ``__signature__`` wins, as in :func:`inspect.signature`)."""
    try:
        return dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return None


def _wait_for_pool_workers(running: set[threading.Thread], timeout_s: float = 120.0) -> None:
    """Let the thread-pool workers that a failed construction started finish their item. A dataset caching its cases
    in a ``ThreadPool`` (MONAI's CacheDataset) that fails on one case leaves its workers on the case in hand; a process
    that ends under a worker inside torch's or a reader's native code aborts ("terminate called without an active
    exception", exit code 134) instead of exiting with the error."""
    from multiprocessing.dummy import DummyProcess  # what ThreadPool's workers are

    for thread in threading.enumerate():
        if thread not in running and isinstance(thread, DummyProcess):
            thread.join(timeout_s)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
