"""``clara-fl site setup``: prepare a provisioned FLARE startup kit (server or client) for clara-fl jobs."""

from __future__ import annotations

import argparse
import os

from clara_fl.apps.common import add_set_argument


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    site = subparsers.add_parser("site", help="set up a FLARE site (startup kit) for clara-fl jobs")
    actions = site.add_subparsers(dest="action", metavar="ACTION", required=True)
    setup = actions.add_parser(
        "setup",
        help="allow clara-fl's classes, write the site's data location and code policy into SITE_DIR/local/",
        description="Adds clara-fl's entries to SITE_DIR/local/resources.json (created from resources.json.default), "
        "and writes the site's environment values and code policy to SITE_DIR/local/clara_fl_site.json. "
        "Safe to run again: only what differs is changed.",
    )
    setup.add_argument(
        "site_dir", metavar="SITE_DIR", help="the site's startup kit folder (holding startup/ and local/)"
    )
    add_set_argument(
        setup,
        "site values above the job's environment.json, e.g. DATA_ROOT=/data/spleen "
        "'DATASET_JSON=/data/spleen/dataset_{SITE_NAME}.json'; merged with the values already set",
    )
    setup.add_argument(
        "--allow-code",
        action="store_true",
        help="let jobs' config #expressions and lambdas run as full Python here (code_policy 'full'); "
        "without it the site records code_policy 'restricted'",
    )
    setup.add_argument(
        "--privacy",
        action="append",
        default=None,
        metavar="FILTER[:KEY=VALUE,...]",
        help="filters this site applies to everything it sends, whatever the job says (a FLARE privacy scope, the "
        "site's default, in local/privacy.json): PercentilePrivacy, SVTPrivacy or ExcludeVars, e.g. "
        "'PercentilePrivacy:percentile=10,gamma=0.01'; repeat for several; --privacy none removes it",
    )
    setup.add_argument(
        "--confinement",
        choices=["required", "preferred", "off"],
        default=None,
        help="run each job's config code in a Landlock-confined process: 'required' refuses jobs where the kernel "
        "cannot confine them, 'preferred' (the default) confines where it can and warns where it cannot, 'off' "
        "never confines (kept in local/clara_fl_site.json)",
    )
    setup.set_defaults(run=run_setup)


def run_setup(args: argparse.Namespace) -> int:
    from clara_fl.config.variables import parse_set_args
    from clara_fl.fl.jobs.privacy import parse_privacy_option, write_site_privacy
    from clara_fl.fl.jobs.privacy_check import judge_result_filters
    from clara_fl.fl.jobs.site_setup import setup_site

    privacy = None if args.privacy is None else [parse_privacy_option(p) for p in args.privacy if p != "none"]
    # a site policy applies to every job: judged on its settings alone, before anything is written
    privacy_lines = judge_result_filters(privacy or [], None, "--privacy")
    result = setup_site(
        args.site_dir, parse_set_args(args.set), allow_code=args.allow_code, confinement=args.confinement
    )
    print(f"clara-fl site setup: {result.summary()}")
    if privacy is not None:
        path, changed = write_site_privacy(result.kit.local_dir, privacy)
        names = ", ".join(f["path"].rpartition(".")[2] for f in privacy) or "none"
        print(
            f"  {os.path.relpath(path, result.kit.root)}: site privacy filters: {names}"
            f"{'' if changed else ' (unchanged)'}"
        )
        for line in privacy_lines:
            print(f"    {line}")
    return 0
