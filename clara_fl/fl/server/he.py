"""FLARE's HE cross-site evaluation, able to send encrypted models (needs TenSEAL: ``pip install clara-fl[he]``).

FLARE 2.9 deep-copies a broadcast task's data before sending it; a TenSEAL ``CKKSVector`` refuses to be copied
under the server's context (it holds no secret key), so FLARE's ``HECrossSiteModelEval`` never sends the sites'
encrypted models, nor the server's, for validation. This subclass sends them serialized (bytes, as FLARE's own
``HEModelShareableGenerator`` sends the global model during training); the sites' ``HEModelDecryptor`` reads
both.
"""

from __future__ import annotations

from typing import Any

from nvflare.apis.dxo import DXO
from nvflare.apis.fl_context import FLContext
from nvflare.app_opt.he.cross_site_model_eval import HECrossSiteModelEval as _HECrossSiteModelEval
from nvflare.app_opt.he.homomorphic_encrypt import serialize_nested_dict

from clara_fl.fl.flare_internals.task_check_period import PollsAtItsTaskCheckPeriod

__all__ = ["HECrossSiteModelEval"]


class HECrossSiteModelEval(PollsAtItsTaskCheckPeriod, _HECrossSiteModelEval):
    """FLARE's HECrossSiteModelEval whose validation tasks carry encrypted models as bytes, polling every
    ``task_check_period`` seconds."""

    def _load_validation_content(self, name: str, load_dir: str, fl_ctx: FLContext) -> DXO | None:
        dxo: Any = super()._load_validation_content(name, load_dir, fl_ctx)
        if dxo is not None and isinstance(dxo.data, dict):
            serialize_nested_dict(dxo.data)
        return dxo
