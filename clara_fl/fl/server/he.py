"""The server's HE components for packed CKKS vectors, on FLARE's (needs TenSEAL: ``pip install clara-fl[he]``).

The sites send their updates as context-free ciphertext bytes, packed into one-ciphertext chunks
(:mod:`clara_fl.fl.he_packing`). Here:

* :class:`HEInTimeAccumulateWeightedAggregator` loads the job's public context (``server_context.tenseal``) once
  per run, turns each chunk's bytes into a ``CKKSVector`` under it, and leaves the weighted sum to FLARE's
  aggregator (same weights, same arithmetic); it refuses an update packed differently from the round's first.
* :class:`HEModelShareableGenerator` packs the plain global model the same way the first time an encrypted update
  arrives (plain chunks, which FLARE's generator adds to the encrypted ones) and then leaves the update to FLARE's.
* :class:`HEClaraModelPersistor` lets the saved global model change from named tensors to packed chunks once.
* :class:`HECrossSiteModelEval` sends encrypted models as bytes: FLARE 2.9 deep-copies a broadcast task's data,
  and a ``CKKSVector`` under the server's context (no secret key) refuses to be copied.
"""

from __future__ import annotations

from typing import Any

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.he.cross_site_model_eval import HECrossSiteModelEval as _HECrossSiteModelEval
from nvflare.app_opt.he.homomorphic_encrypt import load_tenseal_context_from_workspace, serialize_nested_dict
from nvflare.app_opt.he.intime_accumulate_model_aggregator import (
    HEInTimeAccumulateWeightedAggregator as _FlareAggregator,
)
from nvflare.app_opt.he.model_shareable_generator import HEModelShareableGenerator as _FlareGenerator
from nvflare.security.logging import secure_format_exception

from clara_fl.fl.flare_internals.task_check_period import PollsAtItsTaskCheckPeriod
from clara_fl.fl.he_packing import LAYOUT_META_KEY, PackedLayout, deserialize_packed, is_packed_key, pack_plain
from clara_fl.fl.server.persistor import ClaraModelPersistor

__all__ = [
    "HEClaraModelPersistor",
    "HECrossSiteModelEval",
    "HEInTimeAccumulateWeightedAggregator",
    "HEModelShareableGenerator",
]

SERVER_CONTEXT_FILE = "server_context.tenseal"


def _layout_of(meta: Any) -> PackedLayout | None:
    value = meta.get(LAYOUT_META_KEY) if isinstance(meta, dict) else None
    return PackedLayout.from_meta(value) if value is not None else None


class HEInTimeAccumulateWeightedAggregator(_FlareAggregator):
    """FLARE's HE aggregator (same arguments, same weighing) for packed, context-free updates.

    Args:
        exclude_vars: FLARE's: variables left out of aggregation (a regular expression).
        aggregation_weights: FLARE's: each site's aggregation weight (default 1.0).
        expected_data_kind: FLARE's: WEIGHT_DIFF or WEIGHTS, as the sites send.
        weigh_by_local_iter: FLARE's: the server (not the sites) weighs by the steps, in encrypted space.
        tenseal_context_file: the job's public TenSEAL context in the server's startup folder.
    """

    def __init__(
        self,
        exclude_vars: str | dict[str, str] | None = None,
        aggregation_weights: dict[str, Any] | None = None,
        expected_data_kind: str | dict[str, str] = DataKind.WEIGHT_DIFF,
        weigh_by_local_iter: bool = False,
        tenseal_context_file: str = SERVER_CONTEXT_FILE,
    ) -> None:
        super().__init__(
            exclude_vars=exclude_vars,
            aggregation_weights=aggregation_weights,
            expected_data_kind=expected_data_kind,
            weigh_by_local_iter=weigh_by_local_iter,
        )
        self.tenseal_context_file = tenseal_context_file
        self.tenseal_context: Any = None
        self.round_layout: PackedLayout | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)
        if event_type == EventType.START_RUN and self.tenseal_context is None:
            self.tenseal_context = load_tenseal_context_from_workspace(self.tenseal_context_file, fl_ctx)
        elif event_type == EventType.END_RUN:
            self.tenseal_context = None

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        """Read a packed update's chunks under the job's context and hand it to FLARE's aggregator.

        Args:
            shareable: a site's train result.
            fl_ctx: the server's FL context.
        """
        try:
            dxo = from_shareable(shareable)
            layout = _layout_of(dxo.meta)
        except ValueError as e:
            self.log_error(fl_ctx, f"not a DXO with a readable packed layout: {secure_format_exception(e)}")
            return False
        if layout is not None:
            if self.round_layout is None:
                self.round_layout = layout
            elif layout != self.round_layout:
                site = shareable.get_peer_prop(ReservedKey.IDENTITY_NAME, "?")
                self.log_error(fl_ctx, f"discarding the update from {site}: packed differently from this round's")
                return False
            if self.tenseal_context is None:
                self.tenseal_context = load_tenseal_context_from_workspace(self.tenseal_context_file, fl_ctx)
            packed = {k: v for k, v in dxo.data.items() if is_packed_key(k)}
            dxo.data.update(deserialize_packed(self.tenseal_context, packed))
            dxo.update_shareable(shareable)
        return bool(super().accept(shareable, fl_ctx))

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        """FLARE's weighted mean, with the round's packed layout in the result's metadata."""
        shareable = super().aggregate(fl_ctx)
        layout, self.round_layout = self.round_layout, None
        if layout is None:
            return shareable
        dxo = from_shareable(shareable)
        dxo.set_meta_prop(LAYOUT_META_KEY, layout.to_meta())
        return dxo.to_shareable()


class HEModelShareableGenerator(_FlareGenerator):
    """FLARE's HEModelShareableGenerator for packed updates: the global model is packed like the first encrypted
    update that reaches it, then updated by FLARE's generator chunk by chunk."""

    def shareable_to_learnable(self, shareable: Shareable, fl_ctx: FLContext) -> ModelLearnable:
        """The global model updated in encrypted space.

        Args:
            shareable: the aggregated update.
            fl_ctx: the server's FL context (its global model is updated in place, as FLARE's generator does).

        Raises:
            ValueError: the update is packed differently from the global model, or a packed tensor is missing.
        """
        dxo = from_shareable(shareable)
        layout = _layout_of(dxo.meta)
        base_model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        if layout is not None and dxo.data_kind == DataKind.WEIGHT_DIFF and base_model:
            try:
                self._pack_global_model(base_model, layout)
            except ValueError as e:
                self.log_exception(fl_ctx, "error packing the global model")
                raise ValueError(f"cannot pack the global model: {secure_format_exception(e)}") from e
        learnable: ModelLearnable = super().shareable_to_learnable(shareable, fl_ctx)
        return learnable

    @staticmethod
    def _pack_global_model(base_model: ModelLearnable, layout: PackedLayout) -> None:
        weights = base_model[ModelLearnableKey.WEIGHTS]
        current = _layout_of(base_model.get(ModelLearnableKey.META))
        if current is not None:
            if current != layout:
                raise ValueError("the update is packed differently from the global model")
            return
        packed = pack_plain(weights, layout)
        for name in layout.names:
            del weights[name]
        weights.update(packed)


class HEClaraModelPersistor(ClaraModelPersistor):
    """ClaraModelPersistor whose saved global model may change once from the network's named tensors to packed
    chunks (the first encrypted global model); FLARE's persistence otherwise refuses keys it has not seen."""

    def save_model(self, ml: ModelLearnable, fl_ctx: FLContext) -> None:
        manager = self.persistence_manager
        weights = ml.get(ModelLearnableKey.WEIGHTS) or {}
        if manager is not None and _layout_of(ml.get(ModelLearnableKey.META)) is not None:
            known = manager.var_dict or {}
            if any(is_packed_key(k) and k not in known for k in weights):
                manager.var_dict = {}  # the packed model replaces the plain one as the saved schema
        super().save_model(ml, fl_ctx)


class HECrossSiteModelEval(PollsAtItsTaskCheckPeriod, _HECrossSiteModelEval):
    """FLARE's HECrossSiteModelEval whose validation tasks carry encrypted models as bytes, polling every
    ``task_check_period`` seconds."""

    def _load_validation_content(self, name: str, load_dir: str, fl_ctx: FLContext) -> DXO | None:
        dxo: Any = super()._load_validation_content(name, load_dir, fl_ctx)
        if dxo is not None and isinstance(dxo.data, dict):
            serialize_nested_dict(dxo.data)
        return dxo
