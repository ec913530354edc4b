"""``clara-fl validate`` and ``clara-fl infer``: run an evaluator config (Clara's medl.apps.evaluate)."""

from __future__ import annotations

import argparse
import logging

from clara_fl.apps.common import add_mmar_arguments, code_policy, load_from_args, run_confined

logger = logging.getLogger("clara_fl.evaluate")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    validate = subparsers.add_parser("validate", help="validate a model with config_validation.json")
    add_mmar_arguments(validate, "config/config_validation.json")
    validate.set_defaults(run=run)
    infer = subparsers.add_parser("infer", help="run inference with config_inference.json")
    add_mmar_arguments(infer, "config/config_inference.json")
    infer.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clara_fl.runtime.distributed import is_main_process
    from clara_fl.runtime.startup import build_once
    from clara_fl.workflows.evaluate import EvaluateWorkflow

    loaded = load_from_args(args)
    confined = run_confined(args, loaded)  # --safe: in a confined process, before the config builds anything
    if confined is not None:
        return confined
    with build_once():
        workflow = EvaluateWorkflow.build(loaded, code_policy=code_policy(args))
    metrics = workflow.run()
    if is_main_process():  # metrics are gathered: every rank holds the same numbers
        for name, value in metrics.items():
            print(f"{name}: {value:.4f}")
    return 0
