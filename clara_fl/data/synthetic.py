# Copyright (c) clara-fl contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
Synthetic spleen-CT-like data in the Medical Segmentation Decathlon (MSD) layout.

The Clara spleen MMARs expect ``imagesTr``/``labelsTr`` NIfTI volumes in Hounsfield units and a
decathlon-style ``dataset.json``. :func:`make_synthetic_dataset` writes such a dataset (plus one
datalist per federated site) from a seed, so that training, validation and federated runs can be
exercised without downloading the real Task09_Spleen data.

Each image is an elliptical "body" cylinder of fat-like soft tissue surrounded by air, with a thin
muscle-like wall, one bright ellipsoidal "organ" (the label) and one or two unlabelled bone-like
blobs. With the spleen intensity window ``ScaleIntensityRange(a_min=-57, a_max=164)`` the body fat
falls below the window, the organ inside it and the bone above it, so a tiny UNet learns the task
in a few epochs.

``heterogeneity="mild"`` or ``"strong"`` makes the sites differ as hospitals do (see
:mod:`clara_fl.data.heterogeneity`): each site's cases get their own intensity scale and offset, noise
level, voxel spacing, organ size and fraction of training cases that contain the organ; the profiles are
written to ``sites.json``. The default ``"none"`` writes exactly what earlier versions wrote.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from clara_fl.data.heterogeneity import NEUTRAL, SiteProfile, check_heterogeneity, site_profiles, write_site_profiles
from clara_fl.runtime.files import write_json_atomic

__all__ = ["SyntheticDataset", "make_synthetic_dataset", "SPACING"]

#: voxel spacing (mm) written into every NIfTI affine, like a typical abdominal CT resampling.
SPACING: tuple[float, float, float] = (1.5, 1.5, 2.0)

# Hounsfield-unit levels of the tissue classes (the spleen window is -57..164 HU).
_AIR_HU = -1000.0
_FAT_HU = -85.0  # below the window: body background maps to ~0 after scaling
_MUSCLE_HU = 35.0  # body wall: inside the window but well below the organ
_ORGAN_HU = 100.0  # inside the window: maps to ~0.71 after scaling
_BONE_HU = 450.0  # above the window: clipped to 1 after scaling
_HU_MIN, _HU_MAX = -1024, 3071  # usual 12-bit CT range


@dataclass(frozen=True)
class SyntheticDataset:
    """
    Where :func:`make_synthetic_dataset` wrote its output.

    Args:
        root: the dataset directory; all paths inside the json files are relative to it
            (use it as ``data_file_base_dir``).
        dataset_json: the MSD-style ``dataset.json`` listing every case.
        site_datalists: site name (``site-1`` ...) -> that site's datalist json.
        num_cases: number of labelled (training + validation) cases.
        sites_json: ``sites.json`` with every site's profile, when the sites differ (else None).
    """

    root: Path
    dataset_json: Path
    site_datalists: dict[str, Path] = field(default_factory=dict)
    num_cases: int = 0
    sites_json: Path | None = None


def make_synthetic_dataset(
    output_dir: str | os.PathLike,
    cases: int = 8,
    sites: int = 2,
    shape: tuple[int, int, int] = (64, 64, 64),
    val_fraction: float = 0.25,
    test_cases: int = 1,
    seed: int = 0,
    heterogeneity: str = "none",
    factors: Sequence[str] | None = None,
) -> SyntheticDataset:
    """
    Write a deterministic synthetic spleen-CT dataset in the MSD layout, with per-site datalists.

    Writes ``imagesTr/case_XXX.nii.gz`` (int16, HU) and ``labelsTr/case_XXX.nii.gz`` (uint8, 0/1) for
    ``cases`` labelled cases, ``imagesTs/case_XXX.nii.gz`` for ``test_cases`` unlabelled cases,
    ``dataset.json`` and ``dataset_site-<k>.json`` for ``k = 1..sites``. The last
    ``max(1, round(cases * val_fraction))`` cases are validation cases; training and validation cases
    are each dealt round-robin to the sites. Test cases are numbered from 100 (or the next multiple
    of 100 above ``cases``) and are listed in every site's datalist.

    Args:
        output_dir: directory to write into; created if missing, existing files are overwritten.
        cases: number of labelled cases (training + validation).
        sites: number of federated sites to partition the labelled cases across.
        shape: spatial shape of every volume, each dimension at least 16.
        val_fraction: fraction of the labelled cases used for validation, in (0, 1).
        test_cases: number of unlabelled test cases.
        seed: seed of the generator; the same seed and arguments give identical arrays.
        heterogeneity: ``none`` (identical sites), ``mild`` or ``strong`` per-site differences; a case
            takes the profile of the site it is dealt to; test cases stay neutral.
        factors: which differences vary (default all of :data:`clara_fl.data.heterogeneity.FACTORS`).

    Raises:
        ValueError: when an argument is out of range, or ``cases`` is too small to give every site
            at least one training and one validation case.
    """
    cases, sites, test_cases, shape, val_fraction = _check_args(cases, sites, shape, val_fraction, test_cases)
    heterogeneity, chosen = check_heterogeneity(heterogeneity, factors)
    num_val = _num_val(cases, val_fraction)
    if num_val < sites or cases - num_val < sites:
        raise ValueError(
            f"cases={cases} with val_fraction={val_fraction} gives {cases - num_val} training and {num_val} validation "
            f"case(s), but sites={sites} needs at least {sites} of each; use cases >= "
            f"{_min_cases(sites, val_fraction)} (or fewer sites / another val_fraction)."
        )

    root = Path(output_dir).expanduser().resolve()
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    affine = _affine(shape)
    profiles = site_profiles(sites, heterogeneity, seed, "ct", chosen)
    num_train = cases - num_val
    case_site = [i % sites for i in range(num_train)] + [i % sites for i in range(num_val)]
    without_organ = _cases_without_organ(case_site[:num_train], profiles, seed)

    # independent child streams: a case's volume depends only on (seed, split, case index, shape)
    train_rng, test_rng = np.random.default_rng(seed).spawn(2)
    labelled: list[dict[str, str]] = []
    for idx, rng in enumerate(train_rng.spawn(cases)):
        profile = profiles[case_site[idx]]
        image, label = _make_case(rng, shape, profile, organ_present=idx not in without_organ)
        item = {"image": f"imagesTr/case_{idx:03d}.nii.gz", "label": f"labelsTr/case_{idx:03d}.nii.gz"}
        case_affine = affine if profile.spacing_scale == 1.0 else _affine(shape, profile.spacing_scale)
        _save_nifti(image, case_affine, root / item["image"])
        _save_nifti(label, case_affine, root / item["label"])
        labelled.append(item)
    test_start = 100 * max(1, math.ceil(cases / 100))
    test: list[str] = []
    for idx, rng in enumerate(test_rng.spawn(test_cases), start=test_start):
        image, _ = _make_case(rng, shape)
        path = f"imagesTs/case_{idx:03d}.nii.gz"
        _save_nifti(image, affine, root / path)
        test.append(path)

    training, validation = labelled[: cases - num_val], labelled[cases - num_val :]
    dataset_json = root / "dataset.json"
    _write_json(
        dataset_json,
        {
            "name": "SyntheticSpleen",
            "description": "Synthetic spleen-CT-like volumes (HU) generated by clara_fl.data.synthetic "
            f"(seed={seed}, shape={list(shape)})"
            + ("" if heterogeneity == "none" else f", {heterogeneity} site differences (sites.json)"),
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "spleen"},
            "numTraining": cases,
            "numTest": test_cases,
            "training": training,
            "validation": validation,
            "test": test,
        },
    )
    site_datalists: dict[str, Path] = {}
    for k in range(sites):
        name = f"site-{k + 1}"
        site_list = root / f"dataset_{name}.json"
        _write_json(site_list, {"training": training[k::sites], "validation": validation[k::sites], "test": test})
        site_datalists[name] = site_list
    sites_json = None
    if heterogeneity != "none":
        names = [f"site-{k + 1}" for k in range(sites)]
        extra = {
            name: {
                "spacing_mm": [round(s * profiles[k].spacing_scale, 4) for s in SPACING],
                "training_cases_without_organ": sorted(
                    labelled[i]["image"] for i in without_organ if case_site[i] == k
                ),
            }
            for k, name in enumerate(names)
        }
        sites_json = write_site_profiles(
            root, dict(zip(names, profiles, strict=True)), heterogeneity, seed, chosen, extra
        )
    return SyntheticDataset(
        root=root, dataset_json=dataset_json, site_datalists=site_datalists, num_cases=cases, sites_json=sites_json
    )


def _cases_without_organ(train_site: list[int], profiles: list[SiteProfile], seed: int) -> set[int]:
    """Training case indices drawn without the organ: ``1 - label_frequency`` of each site's, at least one kept."""
    absent: set[int] = set()
    for k, profile in enumerate(profiles):
        if profile.label_frequency >= 1.0:
            continue
        own = [i for i, site in enumerate(train_site) if site == k]
        count = min(len(own) - 1, math.floor((1.0 - profile.label_frequency) * len(own) + 0.5))
        if count > 0:
            chosen = np.random.default_rng([seed, 15, k]).choice(len(own), size=count, replace=False)
            absent.update(own[int(c)] for c in chosen)
    return absent


def _check_args(
    cases: int, sites: int, shape: tuple[int, int, int], val_fraction: float, test_cases: int
) -> tuple[int, int, int, tuple[int, int, int], float]:
    """Validate the arguments of :func:`make_synthetic_dataset` and return them normalised."""

    def _int(name: str, value: object, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
        return int(value)

    cases = _int("cases", cases, 1)
    sites = _int("sites", sites, 1)
    test_cases = _int("test_cases", test_cases, 0)
    try:
        dims = tuple(shape)
    except TypeError:
        dims = ()
    if len(dims) != 3 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 16 for d in dims):
        raise ValueError(f"shape must be a tuple of 3 integers, each >= 16, got {shape!r}.")
    try:
        frac = float(val_fraction)
    except (TypeError, ValueError):
        frac = math.nan
    if not 0.0 < frac < 1.0:
        raise ValueError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}.")
    return cases, sites, test_cases, (int(dims[0]), int(dims[1]), int(dims[2])), frac


def _num_val(cases: int, val_fraction: float) -> int:
    """Number of validation cases: ``val_fraction`` of ``cases`` rounded half up, at least 1."""
    return max(1, math.floor(cases * val_fraction + 0.5))


def _min_cases(sites: int, val_fraction: float) -> int:
    """Smallest ``cases`` that gives every site at least one training and one validation case."""
    cases = 2 * sites
    while True:
        num_val = _num_val(cases, val_fraction)
        if num_val >= sites and cases - num_val >= sites:
            return cases
        cases += 1


def _affine(shape: tuple[int, int, int], spacing_scale: float = 1.0) -> np.ndarray:
    """Diagonal RAS affine with :data:`SPACING` (times ``spacing_scale``), origin placing the volume centre at
    (0, 0, 0) mm."""
    spacing = np.asarray(SPACING) * spacing_scale
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -0.5 * (np.asarray(shape) - 1) * spacing
    return affine


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], cells: int) -> np.ndarray:
    """
    Smooth random field in [-1, 1]: coarse ``cells``^3 white noise upsampled with cubic splines.

    Spline zooming is separable, so it is applied as one small (size, cells) matrix per axis, which is
    much faster than ``ndimage.zoom`` on the whole volume and gives the same result.
    """
    coarse = rng.standard_normal((cells, cells, cells))
    mats = [
        ndimage.zoom(np.eye(cells), (size / cells, 1.0), order=3, mode="nearest", grid_mode=False) for size in shape
    ]
    field_ = np.einsum("ia,jb,kc,abc->ijk", *mats, coarse, optimize=True)
    return field_ / max(float(np.abs(field_).max()), 1e-6)


def _ellipsoid_d2(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Squared normalised distance to an axis-aligned ellipsoid's centre (< 1 inside), from open grids."""
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2


def _make_case(
    rng: np.random.Generator, shape: tuple[int, int, int], profile: SiteProfile = NEUTRAL, organ_present: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One volume: int16 HU image and its uint8 organ label, all geometry relative to ``shape``.

    ``profile`` changes only what differs from neutral, so the neutral profile draws and writes exactly
    the reference case; ``organ_present=False`` leaves the organ out (label all zero).
    """
    n = np.asarray(shape, dtype=np.float64)
    # normalised coordinates in [-1, 1] along each axis (open grids broadcast to the full volume)
    x, y, z = (
        np.linspace(-1.0, 1.0, s).reshape([-1 if axis == i else 1 for axis in range(3)]) for i, s in enumerate(shape)
    )

    # body: elliptical cylinder along z, filling most of the axial field of view
    body_r = rng.uniform([0.78, 0.66], [0.90, 0.80])
    body_c = rng.uniform(-0.05, 0.05, size=2)
    body_d = np.sqrt(((x - body_c[0]) / body_r[0]) ** 2 + ((y - body_c[1]) / body_r[1]) ** 2)  # (X, Y, 1)
    wall_vox = float(np.clip(round(min(shape[:2]) / 20), 1, 3))  # muscle wall thickness: 1-3 voxels
    wall = wall_vox / min(0.5 * n[0] * body_r[0], 0.5 * n[1] * body_r[1])  # ... in normalised units
    body = np.broadcast_to(body_d < 1.0, shape)
    inner = np.broadcast_to(body_d < 1.0 - wall, shape)

    # organ: ellipsoid with a slightly irregular boundary, well inside the body's inner cavity
    organ_r = rng.uniform([0.26, 0.23, 0.28], [0.38, 0.34, 0.42])
    if profile.organ_scale != 1.0 or profile.spacing_scale != 1.0:
        # the same physical size covers fewer voxels at a larger spacing; kept inside the body
        organ_r = organ_r * float(np.clip(profile.organ_scale / profile.spacing_scale, 0.6, 1.45))
    room = (body_r - 1.35 * organ_r[:2]) - wall  # keep the (perturbed) organ away from the wall
    angle, radius = rng.uniform(0.0, 2.0 * np.pi), np.sqrt(rng.uniform(0.0, 0.8))
    organ_c = np.array(
        [
            body_c[0] + radius * room[0] * np.cos(angle),
            body_c[1] + radius * room[1] * np.sin(angle),
            rng.uniform(-0.35, 0.35),
        ]
    )
    organ_d = np.sqrt(_ellipsoid_d2(x, y, z, organ_c, organ_r))
    organ = ((organ_d + 0.25 * _smooth_noise(rng, shape, 6)) < 1.0) & inner
    if not organ_present:
        organ = np.zeros(shape, dtype=bool)

    # distractors: one or two bone-like ellipsoids that are not labelled and do not touch the organ
    bone = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        bone_r = rng.uniform([0.10, 0.10, 0.20], [0.16, 0.16, 0.60])
        # draw candidate centres inside the body and keep the first one clear of the organ, else the
        # farthest one (separation in organ-normalised units against the gap plus the bone's extent)
        n_try = 32
        a, r = rng.uniform(0.0, 2.0 * np.pi, n_try), np.sqrt(rng.uniform(0.0, 1.0, n_try))
        cands = np.stack(
            [
                body_c[0] + r * (body_r[0] - bone_r[0] - wall) * np.cos(a),
                body_c[1] + r * (body_r[1] - bone_r[1] - wall) * np.sin(a),
                rng.uniform(-0.5, 0.5, n_try),
            ],
            axis=1,
        )
        margin = np.linalg.norm((cands - organ_c) / organ_r, axis=1) - (1.45 + np.max(bone_r / organ_r))
        clear = np.flatnonzero(margin > 0)
        bone_c = cands[clear[0] if clear.size else int(np.argmax(margin))]
        bone |= _ellipsoid_d2(x, y, z, bone_c, bone_r) < 1.0
    bone &= inner & (organ_d > 1.45)  # guarantee a gap of soft tissue between bone and organ

    # intensities: piecewise-constant tissue classes, slow fat texture, partial-volume blur, scanner noise
    image = np.full(shape, _AIR_HU, dtype=np.float32)
    image[body] = _MUSCLE_HU + rng.uniform(-10.0, 10.0)
    fat_hu = _FAT_HU + rng.uniform(-10.0, 10.0) + 15.0 * _smooth_noise(rng, shape, 5)
    image[inner] = fat_hu[inner]
    image[organ] = _ORGAN_HU + rng.uniform(-15.0, 15.0)
    image[bone] = _BONE_HU + rng.uniform(-50.0, 150.0)
    image = ndimage.gaussian_filter(image, sigma=0.6, truncate=2.0)
    if profile.intensity_scale != 1.0 or profile.intensity_offset != 0.0:  # the site's scanner calibration
        image = (image * profile.intensity_scale + profile.intensity_offset).astype(np.float32)
    noise_sigma = np.where(body, 20.0, 8.0).astype(np.float32)
    if profile.noise_scale != 1.0:
        noise_sigma *= profile.noise_scale
    image += noise_sigma * rng.standard_normal(shape, dtype=np.float32)
    image = np.clip(np.rint(image), _HU_MIN, _HU_MAX).astype(np.int16)
    return image, organ.astype(np.uint8)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Save ``array`` as NIfTI-1 with ``affine`` as both qform and sform (scanner space, mm)."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _write_json(path: Path, content: dict) -> None:
    """Write ``content`` as indented JSON, crash-safe (a killed run leaves the old file or the new one)."""
    write_json_atomic(path, content)
