"""``clara-fl train``: train an MMAR from its config_train.json (Clara's medl.apps.train)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from clara_fl.apps.common import add_mmar_arguments, code_policy, load_from_args, non_negative_float, run_confined

logger = logging.getLogger("clara_fl.train")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train from config_train.json", description=__doc__)
    add_mmar_arguments(parser, "config/config_train.json")
    parser.add_argument("--write_train_stats", action="store_true", help="write train_stats.json to MMAR_CKPT_DIR")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from MMAR_CKPT_DIR/train_state.pt "
        "(weights, optimizer, scheduler, epoch, best metric)",
    )
    parser.add_argument(
        "--resume_state_every",
        type=non_negative_float,
        default=None,
        metavar="SECONDS",
        help="accepted and ignored (kept for old scripts): train_state.pt is now written after every epoch",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clara_fl.runtime.distributed import is_main_process
    from clara_fl.runtime.startup import build_once
    from clara_fl.workflows.train import RESUME_STATE_FILE, TrainWorkflow

    loaded = load_from_args(args)
    confined = run_confined(args, loaded)  # --safe: in a confined process, before the config builds anything
    if confined is not None:
        return confined
    with build_once():
        workflow = TrainWorkflow.build(loaded, code_policy=code_policy(args))
    workflow.save_state_every_epoch()
    if args.resume:
        epoch = workflow.resume()
        if epoch is None:  # a run killed before its first epoch ended: start it over rather than refuse
            logger.warning(
                "--resume: nothing to resume in %s (no %s); starting from epoch 0", workflow.ckpt_dir, RESUME_STATE_FILE
            )
        elif workflow.finished:
            print(f"training already finished: epoch {epoch} of {workflow.trainer.state.max_epochs}; nothing to resume")
            workflow.record_stats(write=args.write_train_stats)
            return 0
        else:
            logger.info("resuming from epoch %d of %d", epoch, workflow.trainer.state.max_epochs)
    stats = workflow.run(write_stats=args.write_train_stats)
    best = (
        "n/a" if stats.best_key_metric is None else f"{stats.best_key_metric:.4f} (epoch {stats.best_key_metric_epoch})"
    )
    logger.info(
        "training done: %d epochs, %d iterations, %.1f s; best %s: %s; checkpoints in %s",
        stats.epochs_completed,
        stats.total_iterations,
        stats.total_time_s,
        stats.key_metric_name,
        best,
        workflow.ckpt_dir,
    )
    if is_main_process():
        note = no_validation_note(workflow)
        if note:
            logger.warning(note)
    return 0


def no_validation_note(workflow: Any) -> str | None:
    """What to say when the config validates but no validation ran, so no best key-metric ``model.pt``
    came from this run; else None.

    Args:
        workflow: the TrainWorkflow that has run.
    """
    import os

    from clara_fl.config.model_hints import FINAL_MODEL_NAME

    evaluator = workflow.evaluator
    if evaluator is None or evaluator.state.best_metric_epoch >= 0:
        return None
    interval = workflow.loaded.variables.get("num_interval_per_valid")
    every = f" (it runs every num_interval_per_valid={interval} epochs)" if interval else ""
    epochs = workflow.stats.epochs_completed
    why = f"no validation ran in {epochs} epoch(s){every}: this run wrote no best key-metric model.pt"
    root = os.path.abspath(workflow.loaded.mmar_root)
    shown = lambda p: os.path.relpath(p, root) if os.path.abspath(p).startswith(root + os.sep) else p  # noqa: E731
    final = os.path.join(workflow.ckpt_dir, FINAL_MODEL_NAME)
    if not os.path.isfile(final):
        return f"{why}, and no {shown(final)} either"
    return (
        f"{why}; the trained weights are in {shown(final)}: "
        f"export --model_path {shown(final)}, validate or fine-tune with --set MMAR_CKPT={shown(final)}"
    )
