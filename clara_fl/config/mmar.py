"""An MMAR on disk: its folders, its environment.json, and a config file made ready to build."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clara_fl.config.clara40.changes import log_changes
from clara_fl.config.clara40.detect import needs_compat_layer
from clara_fl.config.errors import ConfigError
from clara_fl.config.jsonio import load_json
from clara_fl.config.legacy import translate_legacy
from clara_fl.config.variables import Variables, config_globals

__all__ = ["LoadedConfig", "RawConfig", "load_config", "read_config", "resolve_in_mmar"]

DEFAULT_ENVIRONMENT = "config/environment.json"


def display_name(file: str, mmar_root: str) -> str:
    """A config file as users name it: relative to the MMAR root where possible (as they wrote -c)."""
    rel = os.path.relpath(file, mmar_root)
    return file if rel.startswith("..") else rel


def resolve_in_mmar(mmar_root: str, path: str) -> str:
    """Clara's rule for -c/-e: absolute paths stay, relative ones are under the MMAR root."""
    return path if os.path.isabs(path) else os.path.join(mmar_root, path)


@dataclass(frozen=True)
class LoadedConfig:
    """A config file with every ``{X}`` filled in, plus where it came from."""

    config: dict[str, Any]
    variables: Variables
    file: str
    mmar_root: str
    clara40: bool = False  # written for Clara 4.0: its custom code gets the compatibility layer (docs/clara40.md)

    @property
    def display_file(self) -> str:
        """The file as users name it: relative to the MMAR root where possible."""
        return display_name(self.file, self.mmar_root)


def load_config(
    mmar_root: str | os.PathLike,
    config_file: str,
    environment_file: str | None = DEFAULT_ENVIRONMENT,
    overrides: Mapping[str, Any] | None = None,
    extra_environment: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Read ``config_file`` and ``environment_file`` of an MMAR and substitute variables.

    ``extra_environment`` sits between environment.json and ``overrides`` (a site's local values in FL).
    ``config``, when given, is used instead of reading ``config_file`` (which still names it in errors).
    The MMAR's ``custom/`` folder goes on ``sys.path`` so BYOC ``path`` components import.

    Raises:
        ConfigError: a file is missing or not JSON, or a variable is undefined or circular.
    """
    raw = read_config(mmar_root, config_file, environment_file, overrides, extra_environment, config)
    resolved = raw.variables.substitute(raw.config)
    for name in config_globals(raw.config):  # the effective value, so a saved train_conf tells the truth
        resolved[name] = raw.variables[name]
    return LoadedConfig(resolved, raw.variables, raw.file, raw.mmar_root, raw.clara40)


@dataclass(frozen=True)
class RawConfig:
    """A config file as written, with its variable table (nothing substituted yet)."""

    config: dict[str, Any]
    variables: Variables
    file: str
    mmar_root: str
    clara40: bool = False

    @property
    def display_file(self) -> str:
        """The file as users name it: relative to the MMAR root where possible."""
        return display_name(self.file, self.mmar_root)


def read_config(
    mmar_root: str | os.PathLike,
    config_file: str,
    environment_file: str | None = DEFAULT_ENVIRONMENT,
    overrides: Mapping[str, Any] | None = None,
    extra_environment: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> RawConfig:
    """A config and its variables from config globals < environment.json < ``extra_environment`` < ``overrides``;
    puts the MMAR's ``custom/`` on ``sys.path``. :func:`load_config` substitutes the whole config; the FL
    server substitutes only the network (:func:`clara_fl.workflows.network.build_train_network`)."""
    mmar_root = os.path.abspath(os.fspath(mmar_root))
    if not os.path.isdir(mmar_root):
        raise ConfigError("MMAR folder not found (expected a folder with config/ inside)", file=mmar_root)
    config_path = resolve_in_mmar(mmar_root, config_file)
    display = display_name(config_path, mmar_root)
    try:
        content = dict(config) if config is not None else load_json(config_path)
    except ConfigError as e:
        e.file = display  # users name config files relative to the MMAR, as they wrote -c
        raise
    if not isinstance(content, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(content).__name__}", file=config_path)
    add_custom_to_path(mmar_root)  # before the translation, which looks up BYOC engine classes
    clara40 = needs_compat_layer(content)
    content, changes = translate_legacy(content, display)  # Clara 4.0 wiring, removed handlers (docs/clara40.md)
    log_changes([c for c in changes if "AutoML" not in c.what], display)
    environment: dict[str, Any] = {}
    env_path = None
    if environment_file:
        env_path = resolve_in_mmar(mmar_root, environment_file)
        environment = load_json(env_path, what="environment file")
        if not isinstance(environment, dict):
            raise ConfigError("environment.json must be a JSON object of NAME: value", file=env_path)
    environment.update(extra_environment or {})
    variables = Variables.collect(
        content, environment, overrides, mmar_root=mmar_root, file=display, environment_file=env_path
    )
    return RawConfig(content, variables, config_path, mmar_root, clara40)


def add_custom_to_path(mmar_root: str) -> None:
    custom = os.path.join(mmar_root, "custom")
    if os.path.isdir(custom) and custom not in sys.path:
        sys.path.insert(0, custom)
