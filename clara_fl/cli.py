"""The ``clara-fl`` command. Subcommands import their heavy dependencies only when they run."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from clara_fl import __version__
from clara_fl.apps import bundle, demo, evaluate, export, job, report, simulate, site, synth, train
from clara_fl.runtime.library_logs import quiet_library_exceptions
from clara_fl.runtime.startup import freeze_everything, release_frozen

__all__ = ["main", "console_main", "build_parser"]

EXIT_CONFIG_ERROR = 2
EXIT_USAGE_ERROR = 2  # argparse's status for its own usage errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clara-fl",
        description="Clara Train 4.1 MMARs on MONAI and NVIDIA FLARE: train, validate, infer, export, federate.",
    )
    parser.add_argument("--version", action="version", version=f"clara-fl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    # python -m torch.distributed.launch passes the local rank as an argument; torchrun sets LOCAL_RANK.
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for app in (train, evaluate, export, synth, job, simulate, site, demo, report, bundle):
        app.add_parser(subparsers)
    from clara_fl.apps import convert  # kept apart from the tuple above so branches adding apps merge cleanly

    convert.add_parser(subparsers)
    from clara_fl.apps import stats  # clara-fl stats (federated data statistics)

    stats.add_parser(subparsers)
    from clara_fl.apps import fl_evaluate

    fl_evaluate.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a --safe run starts itself again, confined
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    quiet_library_exceptions(args.debug)  # ignite's and MONAI's tracebacks only with --debug
    from clara_fl.config.errors import ConfigError, UsageError, describe_failure

    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    succeeded = False
    try:
        code = args.run(args)
        succeeded = code == 0
        return code
    except (ConfigError, UsageError) as e:
        if args.debug:
            raise
        print(f"clara-fl {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE_ERROR if isinstance(e, UsageError) else EXIT_CONFIG_ERROR
    except Exception as e:  # a failure while running: one readable line, the traceback on --debug
        if args.debug:
            raise
        print(
            f"clara-fl {args.command}: error: {describe_failure(e)} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"clara-fl {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:
            from clara_fl.runtime.distributed import shutdown_distributed

            shutdown_distributed(wait_for_all=succeeded)
        release_frozen()  # what the command built is garbage now, also when main() runs in-process


def console_main() -> int:
    """The ``clara-fl`` program: :func:`main`, then a quick exit."""
    code = main()
    # The interpreter's last collection would scan every object torch and MONAI created (about 1 s
    # at every exit); frozen objects are skipped, and the process ends anyway.
    freeze_everything()
    return code
