"""Synthetic 2D chest X-ray-like images with a real class signal, for the classification MMAR.

Each image is a smooth "chest" (two darker lung fields on a brighter body) with noise; a positive case
has one bright round opacity inside a lung field. Labels are one-hot lists (``[1, 0]`` normal,
``[0, 1]`` opacity), as multi-label chest X-ray datalists write them.

``heterogeneity="mild"`` or ``"strong"`` gives each site its own brightness scale and offset, noise level,
field of view (the anatomy's size in pixels), opacity size and share of positive training images
(:mod:`clara_fl.data.heterogeneity`, written to ``sites.json``); ``"none"`` writes what earlier versions wrote.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clara_fl.data.heterogeneity import NEUTRAL, SiteProfile, check_heterogeneity, site_profiles, write_site_profiles
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
    sites_json: Path | None = None


def _image(rng: np.random.Generator, size: int, positive: bool, profile: SiteProfile = NEUTRAL) -> np.ndarray:
    """One image; ``profile`` changes only what differs from neutral (the neutral one draws the reference image)."""
    y, x = np.mgrid[0:size, 0:size] / size
    if profile.spacing_scale != 1.0:  # larger pixels: the anatomy covers fewer of them, about the centre
        y, x = 0.5 + (y - 0.5) * profile.spacing_scale, 0.5 + (x - 0.5) * profile.spacing_scale
    body = 0.6 + 0.05 * rng.standard_normal()
    image = np.full((size, size), body)
    for cx in (0.3, 0.7):  # lung fields
        image -= 0.35 * (((x - cx) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1)
    if positive:
        cx, cy = rng.choice([0.3, 0.7]) + rng.uniform(-0.05, 0.05), rng.uniform(0.35, 0.65)
        radius = rng.uniform(0.06, 0.1)
        if profile.organ_scale != 1.0:
            radius *= profile.organ_scale
        image += 0.6 * np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2)))
    if profile.intensity_scale != 1.0 or profile.intensity_offset != 0.0:
        image = image * profile.intensity_scale + profile.intensity_offset
    image += 0.05 * profile.noise_scale * rng.standard_normal((size, size))
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def _deal(items: list[dict], site: int, sites: int) -> list[dict]:
    """Site ``site``'s share: each class dealt round-robin, so every site gets both classes."""
    return [
        item for label in ([1.0, 0.0], [0.0, 1.0]) for item in [i for i in items if i["label"] == label][site::sites]
    ]


def _site_of_items(in_validation: list[bool], sites: int) -> list[int]:
    """The site :func:`_deal` gives each labelled item (case ``i`` is positive when ``i`` is odd)."""
    seen: dict[tuple[bool, bool], int] = {}
    owner = []
    for index, val in enumerate(in_validation):
        key = (val, index % 2 == 1)
        owner.append(seen.get(key, 0) % sites)
        seen[key] = seen.get(key, 0) + 1
    return owner


def _keep_positives(items: list[dict], frequency: float) -> list[dict]:
    """A site's training share with only ``frequency`` of its positive images (at least one kept)."""
    positives = [i for i, item in enumerate(items) if item["label"] == [0.0, 1.0]]
    keep = max(1, math.floor(frequency * len(positives) + 0.5))
    dropped = set(positives[keep:])
    return [item for i, item in enumerate(items) if i not in dropped]


def make_classification_dataset(
    output_dir: str | os.PathLike,
    cases: int = 16,
    sites: int = 2,
    size: int = 64,
    seed: int = 0,
    heterogeneity: str = "none",
    factors: Sequence[str] | None = None,
) -> SyntheticClassificationDataset:
    """Write ``images/case_XXX.png`` and ``dataset.json`` plus ``dataset_site-<k>.json`` (training/validation/test).

    Cases alternate between the two classes; every third pair of cases is for validation; one test image.

    Args:
        output_dir: folder to write into (created if missing).
        cases: labelled images; at least 6 per site.
        sites: sites to deal them to, round-robin.
        size: image side in pixels, at least 32.
        seed: the same seed and arguments give the same images.
        heterogeneity: ``none`` (identical sites), ``mild`` or ``strong`` per-site differences; an image takes
            the profile of the site it is dealt to (the test image stays neutral), and ``dataset.json``
            lists only the training images the sites keep.
        factors: which differences vary (default all of :data:`clara_fl.data.heterogeneity.FACTORS`).

    Raises:
        ValueError: an argument out of range.
    """
    from PIL import Image

    heterogeneity, chosen = check_heterogeneity(heterogeneity, factors)

    if sites < 1 or cases < 6 * sites or size < 32:  # 6 per site: both classes in each site's validation share
        raise ValueError(
            f"need sites >= 1, cases >= 6 * sites, size >= 32; got cases={cases}, sites={sites}, size={size}"
        )
    root = Path(output_dir).expanduser().resolve()
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    profiles = site_profiles(sites, heterogeneity, seed, "xray", chosen)
    in_validation = [(i // 2) % 3 == 2 for i in range(cases)]  # pairs, so validation holds both classes
    owner = _site_of_items(in_validation, sites)
    items = []
    for index in range(cases + 1):
        positive = index % 2 == 1
        path = f"images/case_{index:03d}.png"
        profile = profiles[owner[index]] if index < cases else NEUTRAL
        Image.fromarray(_image(rng, size, positive, profile)).save(root / path)
        items.append({"image": path, "label": [0.0, 1.0] if positive else [1.0, 0.0]})
    test = [items.pop()["image"]]
    validation = [item for item, val in zip(items, in_validation, strict=True) if val]
    training = [item for item, val in zip(items, in_validation, strict=True) if not val]
    shares = {
        k: {
            "training": _keep_positives(_deal(training, k, sites), profiles[k].label_frequency),
            "validation": _deal(validation, k, sites),
        }
        for k in range(sites)
    }
    if heterogeneity != "none":  # the union lists what the sites kept
        kept = {item["image"] for share in shares.values() for item in share["training"]}
        training = [item for item in training if item["image"] in kept]
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
        write_json_atomic(site_list, {**shares[k], "test": test})
        site_datalists[f"site-{k + 1}"] = site_list
    sites_json = None
    if heterogeneity != "none":
        profile_of = {f"site-{k + 1}": profiles[k] for k in range(sites)}
        sites_json = write_site_profiles(root, profile_of, heterogeneity, seed, chosen)
    return SyntheticClassificationDataset(root, dataset_json, site_datalists, cases, sites_json)
