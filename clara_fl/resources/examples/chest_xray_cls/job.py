"""Federated 2D chest X-ray classification (DenseNet121, ROC AUC) with FLARE 2.9's Job Recipe API.

    clara-fl synth --task classification --sites 2   # synthetic X-rays to ~/.clara-fl/data/chest_xray
    python job.py                                   # simulate 2 sites (SimEnv), print the cross-site table
    python job.py --export --export-dir D           # write the job folder D/chest_xray_cls for `nvflare job submit`

Each simulated site reads its data location from the site file in $CLARA_FL_SITE_CONFIG
(`{"environment": {"DATA_ROOT": ..., "DATASET_JSON": ".../dataset_{SITE_NAME}.json"}}`).
"""

import argparse

from nvflare.recipe import SimEnv

from clara_fl.config.variables import parse_set_args
from clara_fl.fl.jobs.results import cross_site_table
from clara_fl.recipes import ClaraFedAvgRecipe
from clara_fl.resources import mmar_path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--mmar", default=str(mmar_path("chest_xray_cls")), help="MMAR root (default: the shipped one)")
parser.add_argument("--num-rounds", type=int, default=3)
parser.add_argument("--local-epochs", type=int, default=2)
parser.add_argument("--n-clients", type=int, default=2)
parser.add_argument("--workspace", default="/tmp/nvflare/chest_xray_cls", help="SimEnv workspace root")
parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="values for the job's environment.json")
args = parser.parse_args()

recipe = ClaraFedAvgRecipe(
    args.mmar,
    num_rounds=args.num_rounds,
    local_epochs=args.local_epochs,
    min_clients=args.n_clients,
    overrides=parse_set_args(args.set),
)
run = recipe.execute(SimEnv(num_clients=args.n_clients, workspace_root=args.workspace))
table = cross_site_table(run.get_result())  # the MMAR's key metric, val_auc
if table is not None:
    print(table)
