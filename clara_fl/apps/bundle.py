"""``clara-fl bundle export``: an MMAR as a MONAI bundle (configs, metadata, weights, BYOC scripts, docs)."""

from __future__ import annotations

import argparse
import os

from clara_fl.apps.common import add_set_argument


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bundle", help="MONAI bundles from MMARs")
    commands = parser.add_subparsers(dest="bundle_command", metavar="BUNDLE_COMMAND", required=True)
    export = commands.add_parser(
        "export", help="write a MONAI bundle that trains, evaluates and infers as the MMAR does"
    )
    export.add_argument("-m", "--mmar", required=True, help="MMAR root folder")
    export.add_argument("-o", "--output", required=True, help="bundle folder to write (must not exist or be empty)")
    export.add_argument("--train-config", default="config/config_train.json", help="train config, relative to the MMAR")
    export.add_argument(
        "--validation-config", help="validation config (default: config/config_validation.json if present)"
    )
    export.add_argument(
        "--inference-config", help="inference config (default: config/config_inference.json if present)"
    )
    export.add_argument("-e", "--environment", default="config/environment.json", help="environment file")
    add_set_argument(export, "variables to bake into the bundle, e.g. epochs=2")
    export.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clara_fl.bundle.export import ExportRequest, export_bundle
    from clara_fl.config.variables import parse_set_args

    request = ExportRequest(
        mmar=args.mmar,
        output=args.output,
        train_config=args.train_config,
        validation_config=args.validation_config,
        inference_config=args.inference_config,
        environment=args.environment,
        overrides=parse_set_args(args.set),
    )
    exported = export_bundle(request)
    print(
        f"wrote the bundle {exported.root}: {', '.join(os.path.basename(c) for c in exported.configs)}"
        + (", models/model.pt" if exported.model else "")
        + (f", {len(exported.scripts)} script file(s)" if exported.scripts else "")
    )
    return 0
