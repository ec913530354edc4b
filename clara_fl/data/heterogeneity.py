"""Seeded per-site differences for the synthetic datasets: sites that differ as hospitals do.

Each site gets a :class:`SiteProfile`: an intensity scale and offset (scanner calibration), a noise
level, a voxel spacing (CT) or field of view (X-ray), an organ or opacity size, and a label frequency.
``none`` gives every site the neutral profile (the data generators then draw exactly what they drew
before this module existed); ``mild`` and ``strong`` spread the sites over a range per factor, so that
with two sites one sits at each end of every range, in a seeded order. The profiles are written into the
dataset folder as ``sites.json``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from clara_fl.runtime.files import write_json_atomic

__all__ = [
    "FACTORS",
    "LEVELS",
    "NEUTRAL",
    "SiteProfile",
    "check_heterogeneity",
    "site_profiles",
    "write_site_profiles",
]

LEVELS = ("none", "mild", "strong")

#: factor -> what it changes, as documented in sites.json
FACTORS: dict[str, str] = {
    "intensity": "intensity_scale multiplies and intensity_offset is added to every value (CT: HU; X-ray: grey "
    "level in 0..1) before the scanner noise",
    "noise": "noise_scale multiplies the standard deviation of the noise",
    "spacing": "spacing_scale multiplies the voxel spacing (CT: the affine's mm per voxel, so the same organ covers "
    "fewer voxels; X-ray: the anatomy's extent in pixels shrinks by the same factor)",
    "organ_size": "organ_scale multiplies the organ's (CT) or the opacity's (X-ray) radii in physical units",
    "label_frequency": "label_frequency is the fraction of the site's training cases that contain the organ (CT; "
    "validation cases always do) or the fraction of its positive training images it keeps (X-ray)",
}


@dataclass(frozen=True)
class SiteProfile:
    """How one site's data differs from the reference (the neutral profile changes nothing).

    Args:
        intensity_scale: multiplies every intensity.
        intensity_offset: added after the scale, in the modality's units (HU for CT, 0..1 grey for X-ray).
        noise_scale: multiplies the noise's standard deviation.
        spacing_scale: multiplies the voxel spacing (CT) or the pixel size (X-ray).
        organ_scale: multiplies the labelled structure's radii.
        label_frequency: fraction of training cases with the structure present (see :data:`FACTORS`).
    """

    intensity_scale: float = 1.0
    intensity_offset: float = 0.0
    noise_scale: float = 1.0
    spacing_scale: float = 1.0
    organ_scale: float = 1.0
    label_frequency: float = 1.0

    @property
    def is_neutral(self) -> bool:
        return self == NEUTRAL


NEUTRAL = SiteProfile()

# level -> factor -> (field, low, high); offsets are in the modality's units, see _OFFSET_UNITS
_RANGES: dict[str, dict[str, tuple[tuple[str, float, float], ...]]] = {
    "mild": {
        "intensity": (("intensity_scale", 0.92, 1.08), ("intensity_offset", -0.5, 0.5)),
        "noise": (("noise_scale", 1.0, 1.5),),
        "spacing": (("spacing_scale", 0.9, 1.1),),
        "organ_size": (("organ_scale", 0.88, 1.12),),
        "label_frequency": (("label_frequency", 0.8, 1.0),),
    },
    "strong": {
        "intensity": (("intensity_scale", 0.8, 1.2), ("intensity_offset", -1.0, 1.0)),
        "noise": (("noise_scale", 1.0, 2.2),),
        "spacing": (("spacing_scale", 0.8, 1.25),),
        "organ_size": (("organ_scale", 0.75, 1.3),),
        "label_frequency": (("label_frequency", 0.5, 1.0),),
    },
}
#: the offset ranges above are in these units per modality
_OFFSET_UNITS = {"ct": 30.0, "xray": 0.1}


def check_heterogeneity(level: str, factors: Iterable[str] | None) -> tuple[str, tuple[str, ...]]:
    """Validate a heterogeneity level and factor selection; ``None`` factors means all of them.

    Raises:
        ValueError: an unknown level or factor, naming the valid ones.
    """
    if level not in LEVELS:
        raise ValueError(f"heterogeneity must be one of {', '.join(LEVELS)}, got {level!r}.")
    chosen = tuple(FACTORS) if factors is None else tuple(factors)
    unknown = [f for f in chosen if f not in FACTORS]
    if unknown or not chosen:
        raise ValueError(f"heterogeneity factors must be among {', '.join(FACTORS)}, got {', '.join(unknown) or '()'}.")
    return level, tuple(f for f in FACTORS if f in chosen)


def site_profiles(
    sites: int, level: str, seed: int, modality: str, factors: Iterable[str] | None = None
) -> list[SiteProfile]:
    """One profile per site: each chosen factor spread evenly over its level's range, in a seeded order.

    With ``sites`` sites, a factor takes the values ``low + (high - low) * i / (sites - 1)``, assigned to
    the sites by a seeded permutation (one site: the middle of the range); a factor not chosen stays neutral.

    Args:
        sites: number of sites.
        level: ``none``, ``mild`` or ``strong``.
        seed: the dataset's seed.
        modality: ``ct`` or ``xray`` (the unit of the intensity offset).
        factors: the factors that vary (default all of :data:`FACTORS`).

    Raises:
        ValueError: an unknown level, factor or modality.
    """
    level, chosen = check_heterogeneity(level, factors)
    if modality not in _OFFSET_UNITS:
        raise ValueError(f"modality must be one of {', '.join(_OFFSET_UNITS)}, got {modality!r}.")
    if level == "none":
        return [NEUTRAL] * sites
    import numpy as np  # here: the CLI's parser reads this module's names without loading numpy

    rng = np.random.default_rng([seed, 14])  # its own stream: the cases' streams are untouched
    positions = np.linspace(0.0, 1.0, sites) if sites > 1 else np.array([0.5])
    values: list[dict[str, float]] = [{} for _ in range(sites)]
    for factor in FACTORS:  # draw a permutation for every factor, so one factor's order never depends on others
        order = rng.permutation(sites)
        if factor not in chosen:
            continue
        for name, low, high in _RANGES[level][factor]:
            unit = _OFFSET_UNITS[modality] if name == "intensity_offset" else 1.0
            for site, position in zip(order, positions, strict=True):
                values[site][name] = round(float(unit * (low + (high - low) * position)), 4)
    return [dataclasses.replace(NEUTRAL, **v) for v in values]


def write_site_profiles(
    root: str | os.PathLike,
    profiles: Mapping[str, SiteProfile],
    level: str,
    seed: int,
    factors: Iterable[str],
    extra: Mapping[str, Mapping[str, object]] | None = None,
) -> Path:
    """Write ``sites.json``: the level, seed, factors, what each field means and every site's profile.

    Args:
        root: the dataset folder.
        profiles: site name -> profile.
        level: the heterogeneity level.
        seed: the dataset's seed.
        factors: the factors that vary.
        extra: site name -> further per-site facts (e.g. the CT spacing in mm, the cases without organ).
    """
    path = Path(root) / "sites.json"
    write_json_atomic(
        path,
        {
            "heterogeneity": level,
            "seed": seed,
            "factors": list(factors),
            "meaning": FACTORS,
            "sites": {
                name: {**dataclasses.asdict(profile), **dict((extra or {}).get(name, {}))}
                for name, profile in profiles.items()
            },
        },
    )
    return path
