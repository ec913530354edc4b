"""FLARE 2.9's privacy filters, each counting what it released.

``PercentilePrivacy``, ``SVTPrivacy`` and ``ExcludeVars`` here filter exactly as FLARE's classes of the same
name do (they call them); afterwards each says in the site's log how much of the update it released, and
appends one record a round to ``privacy_releases.jsonl`` in the job's app folder, which ``clara-fl report``
shows. A round whose filter released nothing, or almost nothing, is a warning: that site's update then
carries (almost) nothing to the global model. Nothing of this is sent to the server.

A record::

    {"round": 2, "filter": "SVTPrivacy", "values": 4808917, "nonzero_before": 1052310,
     "released": 480892, "tensors": 60, "tensors_released": 60, "direction_kept": 0.31, "almost_nothing": false}

``released`` counts the non-zero values sent; ``direction_kept`` is the cosine between the update sent and the
update trained (1: sent as trained; 0: nothing of it, or noise only).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.filters.exclude_vars import ExcludeVars as FlareExcludeVars
from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy as FlarePercentilePrivacy
from nvflare.app_common.filters.svt_privacy import SVTPrivacy as FlareSVTPrivacy

from clara_fl.fl.jobs.privacy import PRIVACY_RELEASES_FILE

__all__ = ["Release", "ExcludeVars", "PercentilePrivacy", "SVTPrivacy", "measure_release"]

# below either, a round's release is "almost nothing" (a warning in the site log and the report)
ALMOST_NOTHING_RELEASED = 0.01  # of the update's non-zero values
ALMOST_NO_DIRECTION = 0.05  # cosine between the update sent and the update trained


@dataclass(frozen=True)
class Release:
    """How much of one round's update a filter let through."""

    round: int | None
    filter: str
    values: int
    nonzero_before: int
    released: int
    tensors: int
    tensors_released: int
    direction_kept: float

    @property
    def almost_nothing(self) -> bool:
        """Nothing released, under 1 % of the update's non-zero values, or under 0.05 of its direction."""
        if self.nonzero_before == 0:
            return False  # nothing to release: the site's update itself was empty
        return (
            self.released == 0
            or self.released < ALMOST_NOTHING_RELEASED * self.nonzero_before
            or self.direction_kept < ALMOST_NO_DIRECTION
        )

    def describe(self) -> str:
        share = self.released / self.nonzero_before if self.nonzero_before else 0.0
        return (
            f"privacy filter {self.filter}, round {self.round}: released {self.released:,} of the update's "
            f"{self.nonzero_before:,} non-zero values ({share:.1%}; {self.tensors_released} of {self.tensors} "
            f"tensors), direction kept {self.direction_kept:.2f}"
        )


def measure_release(
    before: Mapping[str, Any], after: Mapping[str, Any], filter_name: str, round_number: int | None
) -> Release:
    """Compare the update a site trained (``before``) with what its filter lets it send (``after``)."""
    values = nonzero_before = released = tensors_released = 0
    dot = norm_before = norm_after = 0.0
    for name, value in before.items():
        original = np.asarray(value, dtype=np.float64).ravel()
        values += original.size
        nonzero_before += int(np.count_nonzero(original))
        norm_before += float(original @ original)
        if name not in after:
            continue
        sent = np.asarray(after[name], dtype=np.float64).ravel()
        count = int(np.count_nonzero(sent))
        released += count
        tensors_released += count > 0
        norm_after += float(sent @ sent)
        if sent.shape == original.shape:
            dot += float(sent @ original)
    denominator = math.sqrt(norm_before) * math.sqrt(norm_after)
    return Release(
        round=round_number,
        filter=filter_name,
        values=values,
        nonzero_before=nonzero_before,
        released=released,
        tensors=len(before),
        tensors_released=tensors_released,
        direction_kept=round(dot / denominator, 4) if denominator > 0 else 0.0,
    )


class _CountsReleases:
    """Mixin before a FLARE DXOFilter: run it, then log and record what it released."""

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        before = dict(dxo.data)  # FLARE's filters build new arrays; the dict itself may be changed in place
        filtered = super().process_dxo(dxo, shareable, fl_ctx)  # type: ignore[misc]
        after = (filtered if filtered is not None else dxo).data
        round_number = _round_of(dxo, shareable)
        release = measure_release(before, after, type(self).__name__, round_number)
        if release.almost_nothing:
            self.log_warning(  # type: ignore[attr-defined]
                fl_ctx,
                f"{release.describe()}: this round's update carries almost nothing to the global model; "
                "see the filter's settings (docs/fl.md, privacy filters)",
                fire_event=False,
            )
        else:
            self.log_info(fl_ctx, release.describe(), fire_event=False)  # type: ignore[attr-defined]
        _append_record(fl_ctx, release)
        return filtered


def _round_of(dxo: DXO, shareable: Shareable) -> int | None:
    """The round a result belongs to: its meta (clara-fl's Learner sets it there), else its header. FLARE has
    cleared the task itself from the context before the result filters run."""
    found = dxo.get_meta_prop(AppConstants.CURRENT_ROUND, None)
    if found is None:
        found = shareable.get_header(AppConstants.CURRENT_ROUND, None)
    return int(found) if isinstance(found, int) else None


def _append_record(fl_ctx: FLContext, release: Release) -> None:
    app_dir = fl_ctx.get_engine().get_workspace().get_app_dir(fl_ctx.get_job_id())
    with open(os.path.join(app_dir, PRIVACY_RELEASES_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps({**asdict(release), "almost_nothing": release.almost_nothing}) + "\n")


class PercentilePrivacy(_CountsReleases, FlarePercentilePrivacy):
    """FLARE's PercentilePrivacy (the same arguments), counting what it releases."""


class SVTPrivacy(_CountsReleases, FlareSVTPrivacy):
    """FLARE's SVTPrivacy (the same arguments), counting what it releases."""


class ExcludeVars(_CountsReleases, FlareExcludeVars):
    """FLARE's ExcludeVars (the same arguments), counting what it releases."""
