"""A bad site for e2e tests and the bench, copied into a job's app/custom/: a task-result filter that scales the
update of the sites it names (``factor=-10``: the update points the other way, ten times as far)."""

from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable


class ScaleSiteUpdate(Filter):
    def __init__(self, sites: list[str], factor: float = -10.0) -> None:
        super().__init__()
        self.sites = list(sites)
        self.factor = factor

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if fl_ctx.get_identity_name() not in self.sites:
            return shareable
        dxo = from_shareable(shareable)
        if dxo.data_kind not in (DataKind.WEIGHT_DIFF, DataKind.WEIGHTS):
            return shareable
        dxo.data = {
            k: np.asarray(v) * self.factor if np.issubdtype(np.asarray(v).dtype, np.floating) else v
            for k, v in dxo.data.items()
        }
        self.log_info(fl_ctx, f"scaled this site's update by {self.factor}")
        return dxo.update_shareable(shareable)
