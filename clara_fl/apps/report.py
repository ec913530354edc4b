"""``clara-fl report``: a run's results as pictures in one self-contained HTML page."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="write report.html (cross-site matrix, curves, round timeline, per-case metrics) for a run"
    )
    parser.add_argument("path", help="simulator workspace, downloaded job result (<job_id>/) or standalone MMAR")
    parser.add_argument("-o", "--output", help="folder for report.html and its PNGs (default PATH/report)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clara_fl.report.build import write_report

    written = write_report(args.path, args.output)
    print(f"report: {written.html} ({len(written.pictures)} pictures, {written.seconds:.1f} s)")
    return 0
