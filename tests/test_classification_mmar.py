"""The 2D classification MMAR (mmars/chest_xray_cls) on synthetic chest X-ray-like images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clara_fl.cli import main
from tests.conftest import REPO, copy_mmar

# where main keeps the shipped MMARs (the checkout's mmars/ links there)
CLS_MMAR = REPO / "clara_fl" / "resources" / "mmars" / "chest_xray_cls"


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory):
    from clara_fl.data.synthetic_classification import make_classification_dataset

    return make_classification_dataset(tmp_path_factory.mktemp("cls"), cases=12, sites=2, size=32)


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path), dtype=float)


def test_every_split_and_site_holds_both_classes(cls_data) -> None:
    lists = [json.loads(cls_data.dataset_json.read_text())] + [
        json.loads(p.read_text()) for p in cls_data.site_datalists.values()
    ]

    for datalist in lists:
        for split in ("training", "validation"):
            assert {tuple(item["label"]) for item in datalist[split]} == {(1.0, 0.0), (0.0, 1.0)}


def test_positive_images_carry_a_bright_opacity(cls_data) -> None:
    items = json.loads(cls_data.dataset_json.read_text())["training"]
    brightest = {label: [] for label in ((1.0, 0.0), (0.0, 1.0))}
    for item in items:
        image = _read(cls_data.root / item["image"])
        brightest[tuple(item["label"])].append(np.percentile(image, 99.5))

    assert np.mean(brightest[(0.0, 1.0)]) > np.mean(brightest[(1.0, 0.0)]) + 15  # grey levels of 255


def test_the_classification_mmar_trains_validates_and_infers(tmp_path: Path, cls_data) -> None:
    mmar = copy_mmar(CLS_MMAR, tmp_path / "chest_xray_cls", cls_data.root)
    fast = ["num_workers=0", "batch_size=4"]

    assert main(["train", "-m", str(mmar), "--set", "epochs=1", *fast]) == 0
    assert (
        main(["validate", "-m", str(mmar), "--set", "dont_load_ts_model=True", "dont_load_ckpt_model=False", *fast])
        == 0
    )
    assert (
        main(["infer", "-m", str(mmar), "--set", "dont_load_ts_model=True", "dont_load_ckpt_model=False", *fast]) == 0
    )

    assert (mmar / "models" / "model.pt").is_file()
    metrics = dict(line.split(",")[:2] for line in (mmar / "eval" / "metrics.csv").read_text().split())
    assert {"val_auc", "val_accuracy"} <= set(metrics)
    rows = (mmar / "eval" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 and rows[0].split(",")[0].endswith("case_012.png")


def test_synth_writes_classification_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["synth", "--task", "classification", str(tmp_path / "cxr"), "--size", "32"]) == 0

    assert "wrote 12 images" in capsys.readouterr().out
    assert len(list((tmp_path / "cxr" / "images").glob("*.png"))) == 13
