"""``clara-fl train``: train an MMAR from its config_train.json (Clara's medl.apps.train)."""

from __future__ import annotations

import argparse
import logging

from clara_fl.apps.common import add_mmar_arguments, code_policy, load_from_args

logger = logging.getLogger("clara_fl.train")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train from config_train.json", description=__doc__)
    add_mmar_arguments(parser, "config/config_train.json")
    parser.add_argument("--write_train_stats", action="store_true", help="write train_stats.json to MMAR_CKPT_DIR")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted run from MMAR_CKPT_DIR/train_state.pt (weights, optimizer, scheduler, epoch, best metric)",
    )
    parser.add_argument(
        "--resume_state_every", type=float, default=None, metavar="SECONDS",
        help="accepted and ignored (kept for old scripts): train_state.pt is now written after every epoch",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clara_fl.runtime.startup import build_once
    from clara_fl.workflows.train import RESUME_STATE_FILE, TrainWorkflow

    with build_once():
        workflow = TrainWorkflow.build(load_from_args(args), code_policy=code_policy(args))
    workflow.save_state_every_epoch()
    if args.resume:
        epoch = workflow.resume()
        if epoch is None:  # a run killed before its first epoch ended: start it over rather than refuse
            logger.warning("--resume: nothing to resume in %s (no %s); starting from epoch 0", workflow.ckpt_dir, RESUME_STATE_FILE)
        elif workflow.finished:
            print(f"training already finished: epoch {epoch} of {workflow.trainer.state.max_epochs}; nothing to resume")
            return 0
        else:
            logger.info("resuming from epoch %d of %d", epoch, workflow.trainer.state.max_epochs)
    stats = workflow.run(write_stats=args.write_train_stats)
    best = "n/a" if stats.best_key_metric is None else f"{stats.best_key_metric:.4f} (epoch {stats.best_key_metric_epoch})"
    logger.info(
        "training done: %d epochs, %d iterations, %.1f s; best %s: %s; checkpoints in %s",
        stats.epochs_completed, stats.total_iterations, stats.total_time_s, stats.key_metric_name, best, workflow.ckpt_dir,
    )
    return 0
