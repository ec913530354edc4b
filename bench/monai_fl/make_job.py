"""Export the official MONAI FL job: NVFlare's PyTorch ``FedAvgRecipe`` with ``client.py`` and the benchmark bundle.

    python bench/monai_fl/make_job.py OUT_DIR --rounds 20 --data-root D --datalist-pattern 'D/dataset_{SITE_NAME}.json' \\
        --set roi_size=[16,16,16] --set learning_rate=0.001

The recipe is used as NVFlare's MONAI integration example uses it (in-process Client API, full
weights, FedAvg controller, PTFileModelPersistor with the bundle's UNet as the initial model); its
server settings are FLARE's defaults. The bundle goes into the client app's custom/ folder, so each
site has its own copy (and its own models/ folder). Prints the job folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLE = os.path.join(os.path.dirname(HERE), "bundle")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--datalist-pattern", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="ID=JSON")
    args = parser.parse_args()
    for item in args.set:
        if " " in item:
            raise SystemExit(f"--set {item!r}: no spaces (FLARE splits the script arguments on whitespace)")

    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe

    with open(os.path.join(BUNDLE, "configs", "train.json")) as f:
        network = json.load(f)["network_def"]
    model = {"class_path": "monai.networks.nets." + network.pop("_target_"), "args": network}
    train_args = [
        f"--local_epochs {args.local_epochs}",
        f"--data_root {args.data_root}",
        f"--datalist_pattern {args.datalist_pattern}",
        *[f"--set {item}" for item in args.set],
    ]
    name = os.path.basename(os.path.abspath(args.out))
    with tempfile.TemporaryDirectory() as staging:
        shutil.copy(os.path.join(HERE, "client.py"), staging)
        cwd = os.getcwd()
        os.chdir(staging)  # the recipe records the script path as given: keep it relative to the app's custom/
        try:
            recipe = FedAvgRecipe(
                name=name,
                min_clients=2,
                num_rounds=args.rounds,
                model=model,
                train_script="client.py",
                train_args=" ".join(train_args),
                key_metric="val_mean_dice",
            )
            parent = os.path.dirname(os.path.abspath(os.path.join(cwd, args.out)))
            recipe.export(parent)
        finally:
            os.chdir(cwd)
    job = os.path.join(parent, name)
    shutil.copytree(BUNDLE, os.path.join(job, "app", "custom", "bundle"), ignore=shutil.ignore_patterns("__pycache__"))
    print(job)


if __name__ == "__main__":
    main()
