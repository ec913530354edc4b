"""``clara-fl synth``: write a synthetic CT dataset (MSD layout, one datalist per site)."""

from __future__ import annotations

import argparse
import os

from clara_fl.apps.common import positive_int
from clara_fl.data.heterogeneity import FACTORS, LEVELS

DEFAULT_DATA_DIR = "~/.clara-fl/data/spleen"
DEFAULT_CLASSIFICATION_DIR = "~/.clara-fl/data/chest_xray"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help="write synthetic CT volumes with an organ label")
    parser.add_argument(
        "output_dir",
        nargs="?",
        default=DEFAULT_DATA_DIR,
        help=f"folder for imagesTr/, labelsTr/, dataset.json, dataset_site-N.json (default {DEFAULT_DATA_DIR}, "
        "where the spleen MMAR and simulator_configs/spleen_fedavg look)",
    )
    parser.add_argument("--cases", type=positive_int, default=12, help="labelled cases (default 12)")
    parser.add_argument("--sites", type=positive_int, default=2, help="sites to partition them across (default 2)")
    parser.add_argument("--shape", type=positive_int, nargs=3, default=[48, 48, 48], metavar=("X", "Y", "Z"))
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)
    parser.add_argument(
        "--task",
        choices=["segmentation", "classification"],
        default="segmentation",
        help="segmentation: 3D CT volumes with a spleen label (default); classification: 2D chest X-ray-like PNGs "
        f"with one-hot labels for mmars/chest_xray_cls (default folder {DEFAULT_CLASSIFICATION_DIR})",
    )
    parser.add_argument("--size", type=int, default=64, help="classification: image side in pixels (default 64)")
    parser.add_argument(
        "--heterogeneity",
        choices=LEVELS,
        default="none",
        help="how much the sites differ: none (identical, the default), mild or strong per-site intensity scale and "
        "offset, noise, voxel spacing, organ size and label frequency (seeded; written to sites.json)",
    )
    parser.add_argument(
        "--vary",
        type=_factor_list,
        metavar="FACTOR[,FACTOR]",
        help=f"only these differences vary with --heterogeneity (default all: {','.join(FACTORS)})",
    )


def _factor_list(text: str) -> list[str]:
    factors = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in factors if f not in FACTORS]
    if unknown or not factors:
        raise argparse.ArgumentTypeError(
            f"unknown factor(s) {', '.join(unknown) or text!r}; valid: {', '.join(FACTORS)}"
        )
    return factors


def run(args: argparse.Namespace) -> int:
    from clara_fl.data.synthetic import make_synthetic_dataset

    if args.task == "classification":
        return _classification(args)
    try:
        data = make_synthetic_dataset(
            os.path.expanduser(args.output_dir),
            cases=args.cases,
            sites=args.sites,
            shape=tuple(args.shape),
            seed=args.seed,
            heterogeneity=args.heterogeneity,
            factors=args.vary,
        )
    except ValueError as e:
        raise SystemExit(f"clara-fl synth: error: {e}") from None
    print(f"wrote {data.num_cases} cases to {data.root}")
    _print_lists(data.dataset_json, data.site_datalists, data.sites_json)
    return 0


def _print_lists(dataset_json: object, site_datalists: dict, sites_json: object) -> None:
    print(f"  datalist: {dataset_json}")
    for site, path in site_datalists.items():
        print(f"  {site}: {path}")
    if sites_json is not None:
        print(f"  how the sites differ: {sites_json}")


def _classification(args: argparse.Namespace) -> int:
    from clara_fl.data.synthetic_classification import make_classification_dataset

    folder = DEFAULT_CLASSIFICATION_DIR if args.output_dir == DEFAULT_DATA_DIR else args.output_dir
    try:
        data = make_classification_dataset(
            os.path.expanduser(folder),
            cases=args.cases,
            sites=args.sites,
            size=args.size,
            seed=args.seed,
            heterogeneity=args.heterogeneity,
            factors=args.vary,
        )
    except ValueError as e:
        raise SystemExit(f"clara-fl synth: error: {e}") from None
    print(f"wrote {data.num_cases} images to {data.root}")
    _print_lists(data.dataset_json, data.site_datalists, data.sites_json)
    return 0
