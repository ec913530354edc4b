"""The spleen MMAR's training, written by hand with MONAI engines: the baseline of figures 1 and 2.

It builds what ``mmars/spleen_ct_seg/config/config_train.json`` describes (UNet, the same transforms,
CacheDatasets, DataLoaders, DiceLoss, Adam + StepLR, the same train and validation handlers and
metrics, seeded with ``set_determinism``) with no config system at all. The run's settings are the
variables the benchmark overrides in the MMAR (``epochs``, ``roi_size``, ``learning_rate``,
``num_workers``, ``num_interval_per_valid``) plus the data and output locations.

    python bench/handwritten_train.py --data-root DIR --datalist DIR/dataset.json --out OUT --epochs 3
    python bench/handwritten_train.py ... --eval-weights MODEL.pt   # score saved weights (figure 6's neutral evaluator)
"""

from __future__ import annotations

import argparse
import json
import logging
import os


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--datalist", required=True)
    parser.add_argument("--out", required=True, help="checkpoint and TensorBoard folder (MMAR_CKPT_DIR)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--roi", type=int, nargs=3, default=[16, 16, 16])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-interval", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--eval-weights",
        metavar="CHECKPOINT",
        help="do not train: load these weights ({'model': state_dict} or a state_dict) and print the validation metrics",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )

    import torch
    from ignite.metrics import Accuracy
    from monai.data import CacheDataset, DataLoader, load_decathlon_datalist
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import (
        CheckpointSaver,
        LrScheduleHandler,
        MeanDice,
        StatsHandler,
        TensorBoardStatsHandler,
        ValidationHandler,
        from_engine,
    )
    from monai.inferers import SimpleInferer, SlidingWindowInferer
    from monai.losses import DiceLoss
    from monai.networks.nets import UNet
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        RandCropByPosNegLabeld,
        RandShiftIntensityd,
        ScaleIntensityRanged,
        SpatialPadd,
        ToTensord,
    )
    from monai.utils import set_determinism

    set_determinism(seed=args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"
    roi = list(args.roi)
    keys = ["image", "label"]

    load = LoadImaged(keys=keys)
    channel = EnsureChannelFirstd(keys=keys)
    scale = ScaleIntensityRanged(keys="image", a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True)
    crop_fg = CropForegroundd(keys=keys, source_key="image")
    to_tensor = ToTensord(keys=keys)
    train_transforms = [
        load,
        channel,
        scale,
        crop_fg,
        SpatialPadd(keys=keys, spatial_size=roi),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=roi,
            pos=1,
            neg=1,
            num_samples=4,
            image_key="image",
            image_threshold=0,
        ),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        to_tensor,
    ]
    val_transforms = [load, channel, scale, crop_fg, to_tensor]  # Clara's "ref": the same instances

    network = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        num_res_units=2,
        norm="batch",
    ).to(device)
    loss = DiceLoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5000, gamma=0.1)

    train_files = load_decathlon_datalist(args.datalist, True, "training", args.data_root)
    val_files = load_decathlon_datalist(args.datalist, True, "validation", args.data_root)
    train_ds = CacheDataset(
        train_files, transform=train_transforms, cache_num=32, cache_rate=1.0, num_workers=args.num_workers
    )
    val_ds = CacheDataset(
        val_files, transform=val_transforms, cache_num=9, cache_rate=1.0, num_workers=args.num_workers
    )
    train_loader = DataLoader(train_ds, batch_size=2, shuffle=True, num_workers=args.num_workers)
    val_loader = DataLoader(val_ds, batch_size=1, shuffle=False, num_workers=args.num_workers)

    post = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=2),
        ]
    )
    pred_label = from_engine(["pred", "label"])
    first_loss = from_engine(["loss"], first=True)

    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=val_loader,
        network=network,
        inferer=SlidingWindowInferer(roi_size=roi, sw_batch_size=4, overlap=0.5),
        postprocessing=post,
        key_val_metric={"val_mean_dice": MeanDice(include_background=False, output_transform=pred_label)},
        additional_metrics={"val_acc": Accuracy(output_transform=pred_label)},
        val_handlers=[]
        if args.eval_weights
        else [
            StatsHandler(output_transform=lambda x: None),
            TensorBoardStatsHandler(log_dir=args.out, output_transform=lambda x: None),
            CheckpointSaver(
                save_dir=args.out, save_dict={"model": network}, save_key_metric=True, key_metric_filename="model.pt"
            ),
        ],
        amp=amp,
    )
    if args.eval_weights:  # a plain measurement of saved weights: nothing is written
        checkpoint = torch.load(args.eval_weights, map_location="cpu", weights_only=True)
        state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
        network.load_state_dict({k.removeprefix("module."): torch.as_tensor(v) for k, v in state.items()})
        evaluator.run()
        print("EVAL " + json.dumps({k: float(v) for k, v in evaluator.state.metrics.items()}), flush=True)
        return
    trainer = SupervisedTrainer(
        max_epochs=args.epochs,
        device=device,
        train_data_loader=train_loader,
        network=network,
        loss_function=loss,
        optimizer=optimizer,
        inferer=SimpleInferer(),
        postprocessing=post,
        key_train_metric={"train_acc": Accuracy(output_transform=pred_label)},
        train_handlers=[
            LrScheduleHandler(lr_scheduler=lr_scheduler, print_lr=True),
            ValidationHandler(validator=evaluator, epoch_level=True, interval=args.val_interval),
            CheckpointSaver(
                save_dir=args.out,
                save_dict={"model": network, "optimizer": optimizer, "lr_scheduler": lr_scheduler},
                save_final=True,
                final_filename="final_model.pt",
                save_interval=400,
            ),
            StatsHandler(tag_name="train_loss", output_transform=first_loss),
            TensorBoardStatsHandler(log_dir=args.out, tag_name="train_loss", output_transform=first_loss),
        ],
        amp=amp,
    )
    os.makedirs(args.out, exist_ok=True)
    trainer.run()
    logging.getLogger("handwritten").info(
        "training done: %d epochs; best val_mean_dice %.4f (epoch %d)",
        trainer.state.epoch,
        evaluator.state.best_metric,
        evaluator.state.best_metric_epoch,
    )


if __name__ == "__main__":
    main()
