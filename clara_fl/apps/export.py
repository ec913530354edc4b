"""``clara-fl export``: a checkpoint to TorchScript (Clara's medl.apps.export)."""

from __future__ import annotations

import argparse
import json
import os

from clara_fl.apps.common import require_folder
from clara_fl.config.errors import UsageError
from clara_fl.config.model_hints import final_model_hint


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a checkpoint to TorchScript")
    parser.add_argument(
        "-m", "--mmar", default=".", help="MMAR root; relative paths and custom/ code are taken from it"
    )
    parser.add_argument(
        "--model_path",
        default="models/model.pt",
        help="checkpoint with model weights; the network comes from its train_conf, else from the MMAR's "
        "config/config_train.json (Clara 4.0 checkpoints)",
    )
    parser.add_argument("--output_path", default="models/model.ts", help="TorchScript file to write")
    parser.add_argument("--input_shape", required=True, help='example input shape, e.g. "[1, 1, 96, 96, 96]"')
    parser.set_defaults(run=run)


def parse_shape(text: str) -> list[int]:
    """``--input_shape``'s JSON list of positive integers.

    Raises:
        UsageError: ``text`` is not one.
    """
    try:
        shape = json.loads(text)
    except json.JSONDecodeError:
        shape = None
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise UsageError("--input_shape", text, 'expected a JSON list of positive integers, e.g. "[1, 1, 96, 96, 96]"')
    return shape


def run(args: argparse.Namespace) -> int:
    from clara_fl.workflows.export import export_torchscript

    shape = parse_shape(args.input_shape)
    root = os.path.abspath(require_folder(args.mmar, "--mmar", "MMAR folder"))
    in_mmar = lambda p: p if os.path.isabs(p) else os.path.join(root, p)  # noqa: E731
    model_path = in_mmar(args.model_path)
    if not os.path.isfile(model_path):
        hint = final_model_hint(model_path, "--model_path", root)
        raise UsageError("--model_path", args.model_path, f"checkpoint not found at {model_path}{hint}")
    how = export_torchscript(model_path, in_mmar(args.output_path), shape, mmar_root=root)
    print(f"saved {in_mmar(args.output_path)} (torch.jit.{how})")
    return 0
