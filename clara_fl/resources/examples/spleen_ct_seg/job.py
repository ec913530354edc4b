"""Federated spleen CT segmentation with FLARE 2.9's Job Recipe API.

    python job.py                          # simulate 2 sites (SimEnv) and print the cross-site table
    python job.py --export --export-dir D  # write the job folder D/spleen_ct_seg for `nvflare job submit`

Each simulated site reads its data location from the site file in $CLARA_FL_SITE_CONFIG
(`{"environment": {"DATA_ROOT": ...}}`; `clara-fl synth` writes synthetic data for one).
"""

import argparse

from nvflare.recipe import SimEnv

from clara_fl.recipes import ClaraFedAvgRecipe
from clara_fl.resources import mmar_path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--mmar", default=str(mmar_path("spleen_ct_seg")), help="MMAR root (default: the shipped one)")
parser.add_argument("--num-rounds", type=int, default=2)
parser.add_argument("--local-epochs", type=int, default=1)
parser.add_argument("--n-clients", type=int, default=2)
parser.add_argument("--workspace", default="/tmp/nvflare/simulation", help="SimEnv workspace root")
parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="values for the job's environment.json")
args = parser.parse_args()

from clara_fl.config.variables import parse_set_args  # noqa: E402

recipe = ClaraFedAvgRecipe(
    args.mmar,
    num_rounds=args.num_rounds,
    local_epochs=args.local_epochs,
    min_clients=args.n_clients,
    overrides=parse_set_args(args.set),
)
run = recipe.execute(SimEnv(num_clients=args.n_clients, workspace_root=args.workspace))

from clara_fl.fl.jobs.results import cross_site_table  # noqa: E402

table = cross_site_table(run.get_result())  # the MMAR's key metric, val_mean_dice
if table is not None:
    print(table)
