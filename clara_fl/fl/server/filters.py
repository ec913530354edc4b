"""Server-side task result filters."""

from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

__all__ = ["RejectNonFiniteUpdates"]


class RejectNonFiniteUpdates(Filter):
    """Turns a train result holding NaN or Inf into an error reply, so it is never aggregated.

    clara-fl sites never send such weights, but a site running other code, or a faulty one, might;
    one NaN would poison the global model for every site.
    """

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            return shareable
        if dxo.data_kind not in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF) or not isinstance(dxo.data, dict):
            return shareable
        bad = [
            k
            for k, v in dxo.data.items()
            if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()
        ]
        if not bad:
            return shareable
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer else "a site"
        self.log_error(fl_ctx, f"rejected the update from {site}: NaN/Inf in {len(bad)} tensors (e.g. {bad[0]})")
        return make_reply(ReturnCode.BAD_TASK_DATA)
