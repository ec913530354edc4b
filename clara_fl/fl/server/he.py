"""The server's HE components for packed CKKS vectors, on FLARE's (needs TenSEAL: ``pip install clara-fl[he]``).

The sites send their weighted weights as context-free ciphertext bytes, packed into one-ciphertext chunks
(:mod:`clara_fl.fl.he_packing`, :mod:`clara_fl.fl.site.he_filters`). The server only adds: no ciphertext is
multiplied, so no level of the CKKS chain is consumed and the job's context needs one data prime. Here:

* :class:`HEInTimeAccumulateWeightedAggregator` loads the job's public context (``server_context.tenseal``) once
  per run, turns each chunk's bytes into a ``CKKSVector`` under it, and leaves the sum to FLARE's aggregator (same
  accumulation) without FLARE's final division: the sum of the weights the sites state they used goes in plain
  metadata (``clara_he_weight_sum``), and the sites divide after decrypting; the sum of their raw weights
  (aggregation weight x steps, ``clara_he_raw_weight_sum``) goes beside it, the next round's normalization. It
  refuses an update packed differently from the round's first, and fails the round rather than add more than
  ``MAX_SITES`` shares (a sum that could wrap around the modulus).
* :class:`HEModelShareableGenerator` is FLARE's: the aggregated WEIGHTS become the encrypted global model, with
  their metadata (layout, weight sum), which the persistor stores with it.
* :class:`HEClaraModelPersistor` lets the saved global model change from named tensors to packed chunks once.
* :class:`HECrossSiteModelEval` sends encrypted models as bytes: FLARE 2.9 deep-copies a broadcast task's data,
  and a ``CKKSVector`` under the server's context (no secret key) refuses to be copied.

The sum is serialized once, when it is aggregated: the generator, the persistor and the next round's task data keep
those bytes. FLARE's components would read every chunk of the model back under the context (the generator, its
base model; ``HEModelSerializeFilter``, after saving) and serialize it again (before saving, before sending): four
passes over ~4,700 chunks a round on the spleen network, ~3 s of the server's CPU where one pass takes ~1 s.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey
from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.he.constant import HE_ALGORITHM_CKKS
from nvflare.app_opt.he.cross_site_model_eval import HECrossSiteModelEval as _HECrossSiteModelEval
from nvflare.app_opt.he.homomorphic_encrypt import load_tenseal_context_from_workspace, serialize_nested_dict
from nvflare.app_opt.he.intime_accumulate_model_aggregator import (
    HEInTimeAccumulateWeightedAggregator as _FlareAggregator,
)
from nvflare.app_opt.he.model_shareable_generator import HEModelShareableGenerator as _FlareGenerator
from nvflare.security.logging import secure_format_exception

from clara_fl.fl.flare_internals.task_check_period import PollsAtItsTaskCheckPeriod
from clara_fl.fl.he_packing import (
    LAYOUT_META_KEY,
    MAX_SITES,
    RAW_WEIGHT_META_KEY,
    RAW_WEIGHT_SUM_META_KEY,
    USED_WEIGHT_META_KEY,
    WEIGHT_SUM_META_KEY,
    PackedLayout,
    deserialize_packed,
    is_packed_key,
    serialize_packed,
)
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


class _SumHelper(WeightedAggregationHelper):
    """FLARE's weighted accumulation (the contributions as the sites weighed them, the weights summed per key)
    whose result is the sum, not the mean: a CKKS ciphertext cannot be divided without a rescale.

    The weight summed for a contributor is the one it stated in ``stated`` (used weight, raw weight), else FLARE's
    (aggregation weight x steps, for both)."""

    def __init__(self, stated: dict[str, tuple[float, float]], exclude_vars: str | None = None) -> None:
        super().__init__(exclude_vars=exclude_vars, weigh_by_local_iter=False)
        self.stated = stated
        self.weight_sums: dict[str, float] = {}
        self.raw_weight_sum = 0.0

    def reset_stats(self) -> None:
        super().reset_stats()
        self.raw_total = 0.0

    def add(self, data: dict[str, Any], weight: Any, contributor_name: str, contribution_round: int) -> None:
        used, raw = self.stated.get(contributor_name, (float(weight), float(weight)))
        super().add(data, used, contributor_name, contribution_round)
        with self.lock:
            self.raw_total += raw

    def get_result(self) -> dict[str, Any]:
        stats = self.get_aggregation_stats()  # FLARE's lock is not re-entrant: taken before the result's
        with self.lock:
            result = dict(self.total)
            self.weight_sums = {k: float(w) for k, w in self.counts.items()}
            self.raw_weight_sum = self.raw_total
            self.last_aggregation_stats = stats
            self.reset_stats()
        return result


class HEInTimeAccumulateWeightedAggregator(_FlareAggregator):
    """FLARE's HE aggregator (same arguments, same weights) for packed, context-free, site-weighted updates: it adds
    them and sends the sum with the weight sum, which the sites divide by after decrypting.

    Args:
        exclude_vars: FLARE's: variables left out of aggregation (a regular expression).
        aggregation_weights: FLARE's: each site's aggregation weight (default 1.0), summed here; the sites multiply
            by the same weights.
        expected_data_kind: FLARE's: WEIGHTS, as clara-fl's encryptor sends.
        tenseal_context_file: the job's public TenSEAL context in the server's startup folder.

    Raises:
        ValueError: (at aggregation) the weight sums differ between tensors (a contribution lacked some).
    """

    def __init__(
        self,
        exclude_vars: str | dict[str, str] | None = None,
        aggregation_weights: dict[str, Any] | None = None,
        expected_data_kind: str | dict[str, str] = DataKind.WEIGHTS,
        tenseal_context_file: str = SERVER_CONTEXT_FILE,
    ) -> None:
        super().__init__(
            exclude_vars=exclude_vars,
            aggregation_weights=aggregation_weights,
            expected_data_kind=expected_data_kind,
            weigh_by_local_iter=False,
        )
        self.tenseal_context_file = tenseal_context_file
        self.tenseal_context: Any = None
        self.round_layout: PackedLayout | None = None
        # this round's packed shares: each contributor's stated (used, raw) weights, and how many were accepted
        self.stated_weights: dict[str, tuple[float, float]] = {}
        self.shares = 0
        self.shares_lock = threading.Lock()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)  # FLARE's builds its DXO aggregators at START_RUN
        if event_type == EventType.START_RUN:
            for key, dxo_aggregator in self.dxo_aggregators.items():
                excluded = self.exclude_vars.get(key) if isinstance(self.exclude_vars, dict) else None
                dxo_aggregator.aggregation_helper = _SumHelper(self.stated_weights, exclude_vars=excluded)
        if event_type == EventType.START_RUN and self.tenseal_context is None:
            self.tenseal_context = load_tenseal_context_from_workspace(self.tenseal_context_file, fl_ctx)
        elif event_type == EventType.END_RUN:
            self.tenseal_context = None

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        """Read a packed update's chunks under the job's context and hand it to FLARE's aggregator with the weights
        its site states; fail the round (FLARE's system panic, one log line) at a share beyond :data:`MAX_SITES`.

        Args:
            shareable: a site's train result.
            fl_ctx: the server's FL context.
        """
        try:
            dxo = from_shareable(shareable)
            layout = _layout_of(dxo.meta)
            stated = _stated_weights(dxo.meta)
        except ValueError as e:
            self.log_error(fl_ctx, f"not a DXO with a readable packed layout and weights: {secure_format_exception(e)}")
            return False
        if layout is None:
            return bool(super().accept(shareable, fl_ctx))
        site = shareable.get_peer_prop(ReservedKey.IDENTITY_NAME, "?")
        if self.round_layout is None:
            self.round_layout = layout
        elif layout != self.round_layout:
            self.log_error(fl_ctx, f"discarding the update from {site}: packed differently from this round's")
            return False
        with self.shares_lock:
            if self.shares >= MAX_SITES:
                reason = (
                    f"refusing the update from {site}: a round adds at most {MAX_SITES} HE shares (MAX_SITES), "
                    "more could wrap around the CKKS modulus; the round fails"
                )
                self.log_error(fl_ctx, reason)
                self.system_panic(reason, fl_ctx)
                return False
            self.shares += 1  # the slot is held while the update is read
        if stated is not None:
            self.stated_weights[site] = stated
        if self.tenseal_context is None:
            self.tenseal_context = load_tenseal_context_from_workspace(self.tenseal_context_file, fl_ctx)
        packed = {k: v for k, v in dxo.data.items() if is_packed_key(k)}
        dxo.data.update(deserialize_packed(self.tenseal_context, packed))
        dxo.update_shareable(shareable)
        accepted = bool(super().accept(shareable, fl_ctx))
        if not accepted:
            with self.shares_lock:
                self.shares -= 1
        return accepted

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        """The sum of the accepted updates, with the weight sum, the raw weight sum and the round's packed layout in
        its metadata."""
        helpers = [a.aggregation_helper for a in self.dxo_aggregators.values()]
        shareable = super().aggregate(fl_ctx)
        layout, self.round_layout = self.round_layout, None
        with self.shares_lock:
            self.shares = 0
            self.stated_weights.clear()
        sum_helpers = [helper for helper in helpers if isinstance(helper, _SumHelper) and helper.weight_sums]
        sums = {w for helper in sum_helpers for w in helper.weight_sums.values()}
        if len(sums) > 1:
            raise ValueError(f"the tensors' weight sums differ ({sorted(sums)}): a contribution lacked some tensors")
        dxo = from_shareable(shareable)
        if sums:
            dxo.set_meta_prop(WEIGHT_SUM_META_KEY, sums.pop())
            dxo.set_meta_prop(RAW_WEIGHT_SUM_META_KEY, sum_helpers[0].raw_weight_sum)
        if layout is not None:
            dxo.set_meta_prop(LAYOUT_META_KEY, layout.to_meta())
            # serialized once here: the generator, the persistor and the task data then keep these bytes (FLARE's
            # would turn the model into vectors and back twice a round)
            data: dict[str, Any] = dxo.data
            dxo.data = {**data, **serialize_packed({k: v for k, v in data.items() if is_packed_key(k)})}
        return dxo.to_shareable()


def _stated_weights(meta: Any) -> tuple[float, float] | None:
    """The (used, raw) weights a site stated in its update's plain metadata, or None where it stated none.

    Raises:
        ValueError: a stated weight is not a positive number.
    """
    if not isinstance(meta, dict) or USED_WEIGHT_META_KEY not in meta:
        return None
    stated: dict[str, Any] = meta
    try:
        used = float(stated[USED_WEIGHT_META_KEY])
        raw = float(stated.get(RAW_WEIGHT_META_KEY, used))
    except (TypeError, ValueError) as e:
        raise ValueError(f"a stated HE weight is not a number: {e}") from e
    if not (used > 0 and raw > 0):
        raise ValueError(f"the stated HE weights must be positive, got {used} and {raw}")
    return used, raw


class HEModelShareableGenerator(_FlareGenerator):
    """FLARE's HEModelShareableGenerator, refusing what it cannot apply: a packed WEIGHT_DIFF (adding a mean of
    encrypted updates would need a division the server cannot do; clara-fl's sites send weighted WEIGHTS). A packed
    sum becomes the global model as the bytes the aggregator serialized."""

    def shareable_to_learnable(self, shareable: Shareable, fl_ctx: FLContext) -> ModelLearnable:
        """The aggregated encrypted WEIGHTS as the new global model (FLARE's rule), their metadata with it.

        Args:
            shareable: the aggregated update.
            fl_ctx: the server's FL context (its global model is replaced, as FLARE's generator does).

        Raises:
            ValueError: a packed WEIGHT_DIFF, or a packed update not marked as CKKS-encrypted.
        """
        dxo = from_shareable(shareable)
        if _layout_of(dxo.meta) is None:
            learnable: ModelLearnable = super().shareable_to_learnable(shareable, fl_ctx)
            return learnable
        if dxo.data_kind != DataKind.WEIGHTS:
            raise ValueError("a packed HE update must be WEIGHTS: the server cannot divide encrypted differences")
        if dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM) != HE_ALGORITHM_CKKS:
            raise ValueError(f"expected encryption algorithm {HE_ALGORITHM_CKKS} for a packed HE update")
        base_model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        if not base_model:
            self.system_panic(reason="No global base model!", fl_ctx=fl_ctx)
            return base_model
        # FLARE's WEIGHTS rule (the sum replaces the weights) without reading the replaced model's chunks under the
        # context first: the sum's chunks stay the bytes the aggregator serialized
        base_model[ModelLearnableKey.WEIGHTS] = dxo.data
        base_model[ModelLearnableKey.META] = dxo.get_meta_props()
        return base_model


def _chunks_as_tensors(ml: ModelLearnable) -> ModelLearnable:
    """The learnable with its packed chunks' bytes as uint8 tensors (sharing their memory), as a checkpoint keeps
    them: torch.save's pickle (protocol 2) writes a bytes object as a latin-1 string, 1.5 times its size and three
    times slower than a tensor's raw storage."""
    import warnings

    import torch

    weights = ml.get(ModelLearnableKey.WEIGHTS) or {}
    if not any(is_packed_key(k) and isinstance(v, bytes) for k, v in weights.items()):
        return ml
    with warnings.catch_warnings():  # read-only buffers: the tensors are only written to the file
        warnings.simplefilter("ignore", UserWarning)
        stored = {
            k: torch.frombuffer(v, dtype=torch.uint8) if is_packed_key(k) and isinstance(v, bytes) and v else v
            for k, v in weights.items()
        }
    copy = ModelLearnable()
    copy.update(ml)
    copy[ModelLearnableKey.WEIGHTS] = stored
    return copy


def _chunks_as_bytes(ml: ModelLearnable | None) -> ModelLearnable | None:
    """A learnable read from a checkpoint with its packed chunks as bytes again (a tensor or array of uint8)."""
    import torch

    weights = ml.get(ModelLearnableKey.WEIGHTS) if ml is not None else None
    if not weights:
        return ml
    for key, value in weights.items():
        if is_packed_key(key) and isinstance(value, torch.Tensor):
            weights[key] = value.numpy().tobytes()
        elif is_packed_key(key) and isinstance(value, np.ndarray) and value.dtype == np.uint8:
            weights[key] = value.tobytes()
    return ml


class HEClaraModelPersistor(ClaraModelPersistor):
    """ClaraModelPersistor whose saved global model may change once from the network's named tensors to packed
    chunks (the first encrypted global model), and whose checkpoints keep packed chunks as uint8 tensors (read back
    as bytes)."""

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        return _chunks_as_bytes(super().load_model(fl_ctx))

    def get_model(self, model_file: str, fl_ctx: FLContext) -> ModelLearnable:
        return _chunks_as_bytes(super().get_model(model_file, fl_ctx))

    def save_model(self, ml: ModelLearnable, fl_ctx: FLContext) -> None:
        manager = self.persistence_manager
        if manager is not None and _layout_of(ml.get(ModelLearnableKey.META)) is not None:
            # the packed model is the saved schema, replaced whole each round: FLARE's persistence refuses keys it
            # has not seen and new shapes, and a chunk's size changes from round to round
            manager.var_dict = {}
        super().save_model(_chunks_as_tensors(ml), fl_ctx)

    def save(self, learnable: ModelLearnable, fl_ctx: FLContext) -> None:
        """Save the global model; a packed one whose chunks are already bytes (as the aggregator sends them) is saved
        as it is, without the serialize filter, which would read every chunk back under the context after saving.

        Args:
            learnable: the global model.
            fl_ctx: the server's FL context.
        """
        weights = learnable.get(ModelLearnableKey.WEIGHTS) or {}
        packed = _layout_of(learnable.get(ModelLearnableKey.META)) is not None
        if packed and all(isinstance(v, bytes) for k, v in weights.items() if is_packed_key(k)):
            self.save_model(learnable, fl_ctx)
            self.remember_saved(learnable)  # saved as it is, without the filter
        else:
            super().save(learnable, fl_ctx)


class HECrossSiteModelEval(PollsAtItsTaskCheckPeriod, _HECrossSiteModelEval):
    """FLARE's HECrossSiteModelEval whose validation tasks carry encrypted models as bytes, polling every
    ``task_check_period`` seconds."""

    def _load_validation_content(self, name: str, load_dir: str, fl_ctx: FLContext) -> DXO | None:
        dxo: Any = super()._load_validation_content(name, load_dir, fl_ctx)
        if dxo is not None and isinstance(dxo.data, dict):
            serialize_nested_dict(dxo.data)
        return dxo
