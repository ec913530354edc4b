"""Synthetic 2D chest X-ray-like images with a real class signal, for the classification MMAR.

Each image is a smooth "chest" (two darker lung fields on a brighter body) with noise; a positive case
has one bright round opacity inside a lung field. Labels are one-hot lists (``[1, 0]`` normal,
``[0, 1]`` opacity), as multi-label chest X-ray datalists write them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clara_fl.runtime.files import write_json_atomic

__all__ = ["SyntheticClassificationDataset", "make_classification_dataset", "CLASSES"]

CLASSES = ("normal", "opacity")


@dataclass(frozen=True)
class SyntheticClassificationDataset:
    """Where the images and datalists were written (paths in the datalists are relative to ``root``)."""

    root: Path
    dataset_json: Path
    site_datalists: dict[str, Path] = field(default_factory=dict)
    num_cases: int = 0


def _image(rng: np.random.Generator, size: int, positive: bool) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    body = 0.6 + 0.05 * rng.standard_normal()
    image = np.full((size, size), body)
    for cx in (0.3, 0.7):  # lung fields
        image -= 0.35 * (((x - cx) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1)
    if positive:
        cx, cy = rng.choice([0.3, 0.7]) + rng.uniform(-0.05, 0.05), rng.uniform(0.35, 0.65)
        radius = rng.uniform(0.06, 0.1)
        image += 0.6 * np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2)))
    image += 0.05 * rng.standard_normal((size, size))
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def _deal(items: list[dict], site: int, sites: int) -> list[dict]:
    """Site ``site``'s share: each class dealt round-robin, so every site gets both classes."""
    return [
        item for label in ([1.0, 0.0], [0.0, 1.0]) for item in [i for i in items if i["label"] == label][site::sites]
    ]


def make_classification_dataset(
    output_dir: str | os.PathLike, cases: int = 16, sites: int = 2, size: int = 64, seed: int = 0
) -> SyntheticClassificationDataset:
    """Write ``images/case_XXX.png`` and ``dataset.json`` plus ``dataset_site-<k>.json`` (training/validation/test).

    Cases alternate between the two classes; every third pair of cases is for validation; one test image.

    Args:
        output_dir: folder to write into (created if missing).
        cases: labelled images; at least 6 per site.
        sites: sites to deal them to, round-robin.
        size: image side in pixels, at least 32.
        seed: the same seed and arguments give the same images.

    Raises:
        ValueError: an argument out of range.
    """
    from PIL import Image

    if sites < 1 or cases < 6 * sites or size < 32:  # 6 per site: both classes in each site's validation share
        raise ValueError(
            f"need sites >= 1, cases >= 6 * sites, size >= 32; got cases={cases}, sites={sites}, size={size}"
        )
    root = Path(output_dir).expanduser().resolve()
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for index in range(cases + 1):
        positive = index % 2 == 1
        path = f"images/case_{index:03d}.png"
        Image.fromarray(_image(rng, size, positive)).save(root / path)
        items.append({"image": path, "label": [0.0, 1.0] if positive else [1.0, 0.0]})
    test = [items.pop()["image"]]
    in_validation = [(i // 2) % 3 == 2 for i in range(len(items))]  # pairs, so validation holds both classes
    validation = [item for item, val in zip(items, in_validation, strict=True) if val]
    training = [item for item, val in zip(items, in_validation, strict=True) if not val]
    dataset_json = root / "dataset.json"
    write_json_atomic(
        dataset_json,
        {
            "name": "SyntheticChestXray",
            "labels": dict(enumerate(CLASSES)),
            "training": training,
            "validation": validation,
            "test": test,
        },
    )
    site_datalists: dict[str, Path] = {}
    for k in range(sites):
        site_list = root / f"dataset_site-{k + 1}.json"
        share = {
            split: _deal(items_, k, sites) for split, items_ in (("training", training), ("validation", validation))
        }
        write_json_atomic(site_list, {**share, "test": test})
        site_datalists[f"site-{k + 1}"] = site_list
    return SyntheticClassificationDataset(root, dataset_json, site_datalists, cases)
