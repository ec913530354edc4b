"""Arguments every MMAR command shares (Clara's -m/-c/-e/--set)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_mmar_arguments", "load_from_args", "code_policy"]


def add_mmar_arguments(parser: argparse.ArgumentParser, default_config: str) -> None:
    parser.add_argument("-m", "--mmar", required=True, help="MMAR root folder")
    parser.add_argument("-c", "--config", default=default_config, help=f"config file, relative to the MMAR (default: {default_config})")
    parser.add_argument("-e", "--environment", default="config/environment.json", help="environment file (default: config/environment.json)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="NAME=VALUE", help="override variables, e.g. epochs=2 amp=False")
    parser.add_argument(
        "--safe", action="store_true",
        help="run the config's #expressions and lambdas under the restricted policy FL sites use (for configs you did not write)",
    )


def load_from_args(args: argparse.Namespace) -> Any:
    from clara_fl.config.mmar import load_config
    from clara_fl.config.variables import parse_set_args

    return load_config(args.mmar, args.config, args.environment, parse_set_args(args.set))


def code_policy(args: argparse.Namespace) -> str:
    return "restricted" if getattr(args, "safe", False) else "full"
