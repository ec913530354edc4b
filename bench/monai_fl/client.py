"""The official MONAI path in FLARE: a Client API script driving ``monai.fl.client.MonaiAlgo`` on a bundle.

It follows NVFlare's MONAI integration example (``integration/monai/.../client.py``): receive the
global model, ``algo.evaluate`` it, ``algo.train`` ``local_epochs``, send ``algo.get_weights()`` back.
The bundle is ``bench/bundle`` (the spleen MMAR's training); each site reads its own datalist.
Site data and the run's settings come from the command line the job passes (``train_args``).
"""

from __future__ import annotations

import argparse
import json
import os


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle_root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundle"))
    parser.add_argument("--local_epochs", type=int, default=1)
    parser.add_argument("--send_weight_diff", action="store_true")
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--datalist_pattern", required=True, help="datalist path with {SITE_NAME}")
    parser.add_argument(
        "--set", action="append", default=[], metavar="ID=JSON", help="bundle id to override, e.g. roi_size=[16,16,16]"
    )
    args = parser.parse_args()

    import nvflare.client as flare
    from monai.fl.client import MonaiAlgo
    from monai.fl.utils.constants import FlStatistics
    from monai.fl.utils.exchange_object import ExchangeObject

    flare.init()
    site = flare.get_site_name()
    overrides = {
        **{key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)},
        "bundle_root": args.bundle_root,
        "dataset_dir": args.data_root,
        "dataset_json": args.datalist_pattern.replace("{SITE_NAME}", site),
    }
    algo = MonaiAlgo(
        bundle_root=args.bundle_root,
        local_epochs=args.local_epochs,
        send_weight_diff=args.send_weight_diff,
        config_train_filename="configs/train.json",
        train_kwargs=dict(overrides),
        eval_kwargs=dict(overrides),
        disable_ckpt_loading=True,
    )
    algo.initialize(extra={"CLIENT_NAME": site})

    while flare.is_running():
        input_model = flare.receive()
        global_weights = ExchangeObject(weights=input_model.params)
        report = algo.evaluate(data=global_weights)
        key_metric = report.metrics.get("val_mean_dice")
        algo.train(data=global_weights)
        updated = algo.get_weights()
        steps = updated.statistics.get(FlStatistics.NUM_EXECUTED_ITERATIONS)
        flare.send(
            flare.FLModel(
                params=updated.weights,
                metrics={"val_mean_dice": key_metric} if key_metric is not None else {},
                meta={"NUM_STEPS_CURRENT_ROUND": steps},
            )
        )
    algo.finalize()


if __name__ == "__main__":
    main()
