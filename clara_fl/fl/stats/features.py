"""A site's data statistics as FLARE features: what one case contributes, and the sums FLARE asks a site for.

Two kinds of feature, both answered through FLARE's ``Statistics`` methods (count, sum, mean, variance,
min/max, histogram):

- **per case** (one value per case): ``shape_<axis>``, ``spacing_<axis>`` (mm, from the image's affine),
  ``label_fraction_<class>`` and ``label_present_<class>`` (segmentation), ``class_<class>`` (classification: 1 for
  the case's class) and ``load_failed`` (1 for a case whose file failed to load; its other features are absent).
  Their counts are cases.
- **per voxel**: ``intensity_in_label`` and ``intensity_outside_label`` (segmentation; every label value above 0
  counts as inside), ``intensity`` (classification). Their counts, sums and extremes are exact over every voxel;
  their histograms are drawn from at most ``sample_voxels`` voxels per case and region (a seeded uniform sample),
  each weighted by the region's voxels per sampled voxel.

Every histogram bin also knows how many *cases* put something into it (:meth:`DatasetFeatures.histogram`), which
the minimum-count privacy filter needs (:mod:`clara_fl.fl.stats.privacy`). Nothing here names a case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "LOAD_FAILED",
    "VOXEL_FEATURES",
    "CaseSummary",
    "VoxelRegion",
    "DatasetFeatures",
    "summarize_case",
    "spacing_from_affine",
    "histogram_quantiles",
]

LOAD_FAILED = "load_failed"
INTENSITY, IN_LABEL, OUTSIDE_LABEL = "intensity", "intensity_in_label", "intensity_outside_label"
VOXEL_FEATURES = (INTENSITY, IN_LABEL, OUTSIDE_LABEL)
DEFAULT_SAMPLE_VOXELS = 20000


@dataclass(frozen=True)
class VoxelRegion:
    """One case's voxels of one region: exact count, sum, sum of squares and extremes, and a sample for histograms."""

    count: int
    total: float
    squares: float
    low: float
    high: float
    sample: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, sample_voxels: int, rng: np.random.Generator) -> VoxelRegion:
        values = np.asarray(values, dtype=np.float64).ravel()
        sample = values if values.size <= sample_voxels else rng.choice(values, sample_voxels, replace=False)
        return cls(
            int(values.size),
            float(values.sum()),
            float(np.square(values).sum()),
            float(values.min()),
            float(values.max()),
            sample.astype(np.float32),
        )

    def as_record(self) -> dict[str, Any]:
        stats = np.array([self.count, self.total, self.squares, self.low, self.high], dtype=np.float64)
        return {"stats": stats, "sample": self.sample}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> VoxelRegion:
        count, total, squares, low, high = (float(v) for v in np.asarray(record["stats"]).ravel())
        return cls(int(count), total, squares, low, high, np.asarray(record["sample"], dtype=np.float32))


@dataclass(frozen=True)
class CaseSummary:
    """What one case contributes: its per-case values and its voxel regions (empty when it failed to load)."""

    values: dict[str, float] = field(default_factory=dict)
    regions: dict[str, VoxelRegion] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        """Plain values and arrays, for the payload from the confined process."""
        return {"values": dict(self.values), "regions": {k: r.as_record() for k, r in self.regions.items()}}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> CaseSummary:
        """A summary from :meth:`as_record`'s output, checked (it comes from the process that runs job code).

        Raises:
            TypeError, ValueError, KeyError: the record is not one.
        """
        values = {str(k): float(v) for k, v in dict(record["values"]).items()}
        regions = {str(k): VoxelRegion.from_record(r) for k, r in dict(record["regions"]).items()}
        unknown = [k for k in regions if k not in VOXEL_FEATURES]
        if unknown:
            raise ValueError(f"unknown voxel feature(s) {unknown}")
        return cls(values, regions)


def spacing_from_affine(affine: Any, spatial_dims: int) -> list[float]:
    """The voxel size along each spatial axis: the length of the affine's columns."""
    matrix = np.asarray(affine, dtype=np.float64)
    columns = matrix[:spatial_dims, :spatial_dims] if matrix.shape[0] > spatial_dims else matrix
    return [float(v) for v in np.sqrt(np.square(columns).sum(axis=0))[:spatial_dims]]


def summarize_case(
    image: Any,
    label: Any,
    task: str,
    num_classes: int,
    affine: Any = None,
    sample_voxels: int = DEFAULT_SAMPLE_VOXELS,
    seed: int = 0,
) -> CaseSummary:
    """One loaded case (channel-first image, as the MMAR's transforms give it) as its feature values.

    Args:
        image: the image array, channel first.
        label: the label image (segmentation, channel first or not), the class (an index or one-hot), or None.
        task: ``segmentation`` or ``classification``.
        num_classes: classes including the background (the MMAR's ``OUTPUT_CHANNELS``).
        affine: the image's affine (default: the identity, spacing 1).
        sample_voxels: at most this many voxels per region are kept for histograms.
        seed: the sample's seed (the case's position in its datalist).
    """
    array = np.asarray(image, dtype=np.float64)
    spatial = array.shape[1:]
    values: dict[str, float] = {f"shape_{axis}": float(size) for axis, size in enumerate(spatial)}
    spacing = spacing_from_affine(np.eye(len(spatial) + 1) if affine is None else affine, len(spatial))
    values.update({f"spacing_{axis}": value for axis, value in enumerate(spacing)})
    rng = np.random.default_rng(seed)
    regions: dict[str, VoxelRegion] = {}
    if task == "segmentation" and label is not None:
        labels = np.asarray(label)
        if labels.size != np.prod(spatial):  # one-hot channels: the class of each voxel
            labels = np.argmax(labels.reshape(-1, *spatial), axis=0)
        labels = labels.reshape(spatial)
        inside = np.broadcast_to(labels > 0, array.shape)
        for c in range(1, max(num_classes, 2)):
            fraction = float(np.mean(labels == c))
            values[f"label_fraction_{c}"] = fraction
            values[f"label_present_{c}"] = float(fraction > 0)
        if inside.any():
            regions[IN_LABEL] = VoxelRegion.of(array[inside], sample_voxels, rng)
        if not inside.all():
            regions[OUTSIDE_LABEL] = VoxelRegion.of(array[~inside], sample_voxels, rng)
        return CaseSummary(values, regions)
    if label is not None:
        target = np.asarray(label, dtype=np.float64).ravel()
        index = int(np.argmax(target)) if target.size > 1 else int(round(float(target[0])))
        for c in range(max(num_classes, 2)):
            values[f"class_{c}"] = float(c == index)
    regions[INTENSITY] = VoxelRegion.of(array, sample_voxels, rng)
    return CaseSummary(values, regions)


class DatasetFeatures:
    """One dataset of one site (a datalist key): the statistics FLARE asks for, per feature.

    Args:
        cases: every case of the dataset, in datalist order (a failed one as an empty summary).
        failed: how many of them failed to load.
    """

    def __init__(self, cases: Sequence[CaseSummary], failed: int = 0) -> None:
        self.failed = failed
        self.case_values: dict[str, list[float]] = {LOAD_FAILED: [0.0] * (len(cases) - failed) + [1.0] * failed}
        self.regions: dict[str, list[VoxelRegion]] = {}
        for case in cases:
            for name, value in case.values.items():
                self.case_values.setdefault(name, []).append(value)
            for name, region in case.regions.items():
                self.regions.setdefault(name, []).append(region)
        self.bin_cases: dict[str, list[int]] = {}  # feature -> cases per bin of the last histogram drawn

    def names(self) -> list[str]:
        return sorted(self.case_values, key=_feature_order) + [f for f in VOXEL_FEATURES if f in self.regions]

    def case_count(self, feature: str) -> int:
        """How many cases hold the feature (for a voxel feature: the cases with voxels in the region)."""
        return len(self.regions[feature]) if feature in self.regions else len(self.case_values.get(feature, ()))

    def count(self, feature: str) -> int:
        if feature in self.regions:
            return sum(r.count for r in self.regions[feature])
        return len(self.case_values.get(feature, ()))

    def sum(self, feature: str) -> float:
        if feature in self.regions:
            return float(sum(r.total for r in self.regions[feature]))
        return float(np.sum(self.case_values.get(feature, ())))

    def mean(self, feature: str) -> float:
        count = self.count(feature)
        return self.sum(feature) / count if count else 0.0

    def squared_deviation(self, feature: str, mean: float) -> float:
        """The sum of ``(x - mean)**2`` over the feature's values."""
        if feature in self.regions:
            return float(sum(r.squares - 2.0 * mean * r.total + r.count * mean * mean for r in self.regions[feature]))
        return float(np.sum(np.square(np.asarray(self.case_values.get(feature, ()), dtype=np.float64) - mean)))

    def stddev(self, feature: str) -> float:
        count = self.count(feature)
        return float(np.sqrt(self.squared_deviation(feature, self.mean(feature)) / (count - 1))) if count > 1 else 0.0

    def minimum(self, feature: str) -> float:
        if feature in self.regions:
            return min(r.low for r in self.regions[feature])
        return float(np.min(self.case_values[feature]))

    def maximum(self, feature: str) -> float:
        if feature in self.regions:
            return max(r.high for r in self.regions[feature])
        return float(np.max(self.case_values[feature]))

    def histogram(self, feature: str, bins: int, low: float, high: float) -> list[tuple[float, float, float]]:
        """``bins`` equal bins over ``[low, high]`` as ``(low, high, count)``; the cases per bin are kept in
        :attr:`bin_cases` for the privacy filter. A voxel feature's counts are its samples, weighted."""
        edges = np.linspace(low, high, bins + 1)
        counts = np.zeros(bins)
        cases = np.zeros(bins, dtype=np.int64)
        if feature in self.regions:
            for region in self.regions[feature]:
                held, _ = np.histogram(region.sample, bins=edges)
                counts += held * (region.count / max(region.sample.size, 1))
                cases += held > 0
        else:
            held, _ = np.histogram(np.asarray(self.case_values.get(feature, ()), dtype=np.float64), bins=edges)
            counts, cases = held.astype(np.float64), held
        self.bin_cases[feature] = [int(c) for c in cases]
        return [(float(edges[i]), float(edges[i + 1]), float(counts[i])) for i in range(bins)]


def _feature_order(name: str) -> tuple[int, str]:
    prefixes = ("shape_", "spacing_", "label_fraction_", "label_present_", "class_", LOAD_FAILED)
    return next((i for i, p in enumerate(prefixes) if name.startswith(p)), len(prefixes)), name


def histogram_quantiles(
    bins: Sequence[Sequence[float]], percents: Sequence[float] = (5, 25, 50, 75, 95)
) -> dict[str, float]:
    """Quantiles read from a histogram's ``(low, high, count)`` bins, linear inside a bin; empty when it holds nothing.

    FLARE's own quantile statistic needs the optional ``fastdigest`` package; these need only the (filtered)
    histograms, so they never show more than the histograms do.
    """
    counts = np.array([float(b[2]) for b in bins])
    total = counts.sum()
    if not len(bins) or total <= 0:
        return {}
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    out = {}
    for percent in percents:
        target = total * percent / 100.0
        i = int(np.clip(np.searchsorted(cumulative, target, side="left") - 1, 0, len(bins) - 1))
        low, high = float(bins[i][0]), float(bins[i][1])
        share = (target - cumulative[i]) / counts[i] if counts[i] > 0 else 0.0
        out[f"p{percent:g}"] = low + (high - low) * float(np.clip(share, 0.0, 1.0))
    return out
