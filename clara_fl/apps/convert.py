"""``clara-fl convert``: an MMAR's configs rewritten as explicit Clara 4.1 on today's MONAI names.

Clara 4.0 wiring becomes ``@`` references, handlers MONAI removed become post-transforms, removed class and
argument names become today's, AutoML ``search`` annotations are dropped. Every change is printed with its
JSON path. The MMAR is copied as a whole; only the config files differ. Nothing is written until every
config has been translated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

from clara_fl.config.errors import ConfigError, UsageError

__all__ = ["add_parser", "convert_mmar"]

NOT_WORKFLOW_CONFIGS = frozenset({"environment.json"})


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="write an MMAR's Clara 4.0 configs as explicit Clara 4.1 for today's MONAI"
    )
    parser.add_argument("-m", "--mmar", required=True, help="MMAR root to convert (left unchanged)")
    parser.add_argument(
        "-c",
        "--config",
        action="append",
        help="config file(s) to convert, relative to the MMAR "
        "(repeatable; default: every config/*.json except environment.json)",
    )
    parser.add_argument("-o", "--output", required=True, help="folder to write the converted MMAR to (must not exist)")
    parser.set_defaults(run=run)


def _config_files(mmar: str, requested: list[str] | None) -> list[str]:
    if requested:
        return requested
    folder = os.path.join(mmar, "config")
    if not os.path.isdir(folder):
        raise ConfigError("MMAR has no config/ folder", file=mmar)
    return [f"config/{f}" for f in sorted(os.listdir(folder)) if f.endswith(".json") and f not in NOT_WORKFLOW_CONFIGS]


def convert_mmar(mmar: str, output: str, configs: list[str] | None = None) -> dict[str, list[str]]:
    """Copy ``mmar`` to ``output`` with each config translated; returns the changes per config file.

    Args:
        mmar: the MMAR root.
        output: where the converted MMAR goes; must not exist yet.
        configs: config files relative to the MMAR (default: every config/*.json but environment.json).

    Raises:
        UsageError: the MMAR folder is missing, or ``output`` exists or is inside the MMAR.
        ConfigError: a config is missing or invalid, or cannot be translated.
    """
    from clara_fl.config.jsonio import load_json
    from clara_fl.config.legacy import translate_legacy
    from clara_fl.config.modernize import modernize_names

    mmar, output = os.path.abspath(mmar), os.path.abspath(output)
    if not os.path.isdir(mmar):
        raise UsageError("-m", mmar, "MMAR folder not found")
    if os.path.exists(output):
        raise UsageError("-o", output, "the folder already exists; give a new folder")
    if output == mmar or output.startswith(mmar + os.sep):
        raise UsageError("-o", output, "expected a folder outside the MMAR")
    translated: dict[str, dict] = {}
    changes: dict[str, list[str]] = {}
    for name in _config_files(mmar, configs):
        path = os.path.join(mmar, name)
        content = load_json(path)
        if not isinstance(content, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(content).__name__}", file=name)
        config, found = translate_legacy(content, name)
        found += modernize_names(config)
        translated[name] = config
        changes[name] = [str(c) for c in found]
    shutil.copytree(mmar, output, symlinks=True)
    for name, config in translated.items():
        with open(os.path.join(output, name), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
    return changes


def run(args: argparse.Namespace) -> int:
    changes = convert_mmar(args.mmar, args.output, args.config)
    for name, lines in changes.items():
        print(f"{name}: {len(lines)} change(s)" if lines else f"{name}: unchanged")
        for line in lines:
            print(f"  {line}")
    print(f"wrote {os.path.abspath(args.output)}")
    return 0
