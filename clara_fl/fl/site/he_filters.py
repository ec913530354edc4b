"""The sites' HE filters: FLARE's ``HEModelEncryptor`` / ``HEModelDecryptor`` with packed CKKS vectors (needs TenSEAL:
``pip install clara-fl[he]``).

The encryptor packs the selected tensors into one-ciphertext chunks (:mod:`clara_fl.fl.he_packing`) and sends
each chunk's seeded ciphertext bytes without a context; the layout and FLARE's ``PROCESSED_KEYS`` go in plain DXO
metadata. The decryptor unpacks by that layout.

The server only adds (no level of the CKKS chain is consumed), so everything else happens at the sites, with
FLARE's weighing rule (raw weight = the site's aggregation weight x its steps in the round, applied exactly once),
normalized by a factor common to the round's sites so that the sum cannot wrap around the modulus
(:func:`~clara_fl.fl.he_packing.used_weight`):

* the encryptor sends the site's weights after the round, ``w * (received global model + update)``, as WEIGHTS,
  where ``w`` = raw weight x WEIGHT_SUM_TARGET / the previous round's raw weight sum (which the received global
  model carries in plain metadata, :data:`RAW_WEIGHT_SUM_META_KEY`), or the aggregation weight alone in the first
  round; ``w`` and the raw weight go in plain metadata. The update is the WEIGHT_DIFF the learner and any privacy
  filter produced; the decryptor of the same task recorded the global model it was applied to (and its raw weight
  sum) in the task's FL context. A share whose weighted values reach ``value_bound / MAX_SITES`` is refused;
* the server adds the encrypted weighted weights and the stated weights ``w`` (FLARE's aggregator arithmetic
  without its division) and sends the sum with the weight sum (:data:`WEIGHT_SUM_META_KEY`) and the raw weight
  sum in plain metadata;
* the decryptor divides the decrypted sum by that weight sum: the weighted mean of the sites' weights, which is
  FedAvg's new global model (the global model plus the weighted mean of the updates).

Integer tensors (batch-norm step counters) travel in the clear, weighted like the rest: they count the steps the
site already reports in plain metadata.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_opt.he.constant import HE_ALGORITHM_CKKS
from nvflare.app_opt.he.homomorphic_encrypt import load_tenseal_context_from_workspace
from nvflare.app_opt.he.model_decryptor import HEModelDecryptor as _FlareDecryptor
from nvflare.app_opt.he.model_encryptor import HEModelEncryptor as _FlareEncryptor

from clara_fl.fl.he_packing import (
    LAYOUT_META_KEY,
    MAX_SITES,
    RAW_WEIGHT_META_KEY,
    RAW_WEIGHT_SUM_META_KEY,
    USED_WEIGHT_META_KEY,
    WEIGHT_SUM_META_KEY,
    PackedLayout,
    decrypt_packed,
    encrypt_packed,
    is_packed_key,
    select_layers,
    share_bound,
    slot_count,
    used_weight,
)

__all__ = ["RECEIVED_MODEL_PROP", "RECEIVED_RAW_WEIGHT_SUM_PROP", "HEModelDecryptor", "HEModelEncryptor"]

# the model a task brought (decrypted), for the encryptor of the same task's result: private to the site's FL context
RECEIVED_MODEL_PROP = "clara_fl.he.received_model"
# the raw weight sum that model's metadata carried (None: the first round's rule), likewise
RECEIVED_RAW_WEIGHT_SUM_PROP = "clara_fl.he.received_raw_weight_sum"


def _selection(encrypt_layers: Any) -> list[str] | str | None:
    """FLARE's encryptor keeps ``encrypt_layers`` as None, ``[True]`` (all, after START_RUN), a list of names or a
    compiled regular expression; as :func:`~clara_fl.fl.he_packing.select_layers` takes it."""
    if encrypt_layers is None or encrypt_layers == [True]:
        return None
    if isinstance(encrypt_layers, re.Pattern):
        return encrypt_layers.pattern
    return list(encrypt_layers)


class HEModelEncryptor(_FlareEncryptor):
    """FLARE's HEModelEncryptor (same arguments) sending the selected tensors packed into few CKKS vectors, as
    context-free ciphertext bytes."""

    tenseal_context: Any  # FLARE's: loaded at START_RUN

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        """Weigh, pack and encrypt the site's weights (the update applied to the global model it was trained from).

        Args:
            dxo: the site's WEIGHT_DIFF (or WEIGHTS).
            shareable: the task result it belongs to.
            fl_ctx: the site's FL context.

        Raises:
            ValueError: the DXO lacks its steps (``NUM_STEPS_CURRENT_ROUND``) while the site weighs, a WEIGHT_DIFF
                has no received global model to apply it to, the selection matches no tensor, or the weighted values
                reach the share of the context's modulus one of up to MAX_SITES sites may take.
        """
        if self.tenseal_context is None:
            self.tenseal_context = load_tenseal_context_from_workspace(self.tenseal_context_file, fl_ctx)
        aggregation_weight, steps = 1.0, 1.0
        if self.aggregation_weights:
            # the server sums these weights for this contributor: the site's own name
            aggregation_weight = float(self.aggregation_weights.get(fl_ctx.get_identity_name(), 1.0))
        if self.weigh_by_local_iter:
            n_steps = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, None)
            if n_steps is None:
                raise ValueError("DXO data does not have local iterations for weighting!")
            steps = float(n_steps)
        weight = used_weight(aggregation_weight, steps, fl_ctx.get_prop(RECEIVED_RAW_WEIGHT_SUM_PROP))
        params = _site_weights(dxo, fl_ctx.get_prop(RECEIVED_MODEL_PROP))
        start = time.perf_counter()
        floating = [k for k, v in params.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]
        selected = select_layers(floating, _selection(self.encrypt_layers))
        largest = weight * max(float(np.max(np.abs(params[k]), initial=0.0)) for k in selected)
        bound = share_bound(self.tenseal_context)
        if not largest < bound:
            raise ValueError(
                f"the weighted weights reach {largest:.4g} (weight {weight:.4g}), beyond the {bound:.4g} one of up to "
                f"{MAX_SITES} sites may add under the HE context's modulus: the model's values are too large to encrypt"
            )
        layout = PackedLayout.of(params, selected, slot_count(self.tenseal_context))
        packed = encrypt_packed(self.tenseal_context, params, layout, weight)
        chosen = set(selected)
        # as FLARE's encryptor sends them: flat and weighed (the site's learner reshapes what it receives)
        plain = {k: np.asarray(v).ravel() * np.float64(weight) for k, v in params.items() if k not in chosen}
        processed = {**{k: True for k in packed}, **{k: False for k in plain}}
        self.log_info(
            fl_ctx,
            f"Encryption time for {layout.total} values of {len(selected)} of {len(params)} tensors in "
            f"{len(packed)} CKKS vectors: {time.perf_counter() - start:.2f} seconds "
            f"({sum(len(b) for b in packed.values()) / 1e6:.1f} MB, no context), weighed {weight:.4g} "
            f"(raw {aggregation_weight * steps:.4g})",
        )
        new_dxo = DXO(data_kind=DataKind.WEIGHTS, data={**packed, **plain}, meta=dxo.meta)
        new_dxo.set_meta_prop(MetaKey.PROCESSED_KEYS, processed)
        new_dxo.set_meta_prop(MetaKey.PROCESSED_ALGORITHM, HE_ALGORITHM_CKKS)
        new_dxo.set_meta_prop(LAYOUT_META_KEY, layout.to_meta())
        new_dxo.set_meta_prop(USED_WEIGHT_META_KEY, weight)
        new_dxo.set_meta_prop(RAW_WEIGHT_META_KEY, aggregation_weight * steps)
        return new_dxo


def _site_weights(dxo: DXO, received: Any) -> dict[str, Any]:
    """The site's weights: a WEIGHTS DXO's data, or a WEIGHT_DIFF applied to the model the task brought.

    Raises:
        ValueError: a WEIGHT_DIFF without the received model, or with a tensor that model lacks.
    """
    data: dict[str, Any] = dxo.data
    if dxo.data_kind != DataKind.WEIGHT_DIFF:
        return data
    if not isinstance(received, dict):
        raise ValueError("no global model recorded for this task: HEModelDecryptor must decrypt the train task's data")
    missing = [k for k in data if k not in received]
    if missing:
        raise ValueError(f"{len(missing)} updated tensors are not in the received global model (e.g. {missing[0]})")
    weights = {}
    for key, diff in data.items():
        diff = np.asarray(diff)
        base = np.asarray(received[key], dtype=np.float64).reshape(diff.shape)
        weights[key] = np.rint(base + diff).astype(diff.dtype) if np.issubdtype(diff.dtype, np.integer) else base + diff
    return weights


class HEModelDecryptor(_FlareDecryptor):
    """FLARE's HEModelDecryptor (same arguments) for packed models: decrypts the chunks with the site's context and
    rebuilds the tensors by the layout in the DXO's metadata; a model without a layout goes to FLARE's."""

    tenseal_context: Any  # FLARE's: loaded at START_RUN

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        """Decrypt and unpack a packed model and divide it by its weight sum; leave a plain one (the first round's) as
        it is. Either way the model and the raw weight sum in its metadata (None for a plain one, or one saved without
        it) are recorded in ``fl_ctx`` for the encryptor of this task's result.

        Args:
            dxo: the model the server sent.
            shareable: the task data it belongs to.
            fl_ctx: the site's FL context.

        Raises:
            ValueError: the layout is malformed or a chunk is missing.
        """
        layout_meta = dxo.get_meta_prop(LAYOUT_META_KEY, None)
        if layout_meta is None:
            # a plain model (the first round's): FLARE's decryptor leaves it as it is
            result = super().process_dxo(dxo, shareable, fl_ctx)
            fl_ctx.set_prop(RECEIVED_MODEL_PROP, dict((result or dxo).data), private=True, sticky=False)
            fl_ctx.set_prop(RECEIVED_RAW_WEIGHT_SUM_PROP, None, private=True, sticky=False)
            return result
        if dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM, None) != HE_ALGORITHM_CKKS:
            self.log_error(fl_ctx, "shareable is not HE CKKS encrypted")
            return None
        if self.tenseal_context is None:
            self.tenseal_context = load_tenseal_context_from_workspace(self.tenseal_context_file, fl_ctx)
        layout = PackedLayout.from_meta(layout_meta)
        weight_sum = float(dxo.get_meta_prop(WEIGHT_SUM_META_KEY, 1.0))
        # absent in a model saved before the sites normalized: the next update then follows the first round's rule
        raw_sum = dxo.get_meta_prop(RAW_WEIGHT_SUM_META_KEY, None)
        start = time.perf_counter()
        data: dict[str, Any] = dxo.data
        tensors = decrypt_packed(self.tenseal_context, data, layout, weight_sum)
        plain = {k: np.asarray(v) / weight_sum for k, v in data.items() if not is_packed_key(k)}
        self.log_info(
            fl_ctx,
            f"Decryption time for {layout.total} values in {len(layout.keys)} CKKS vectors: "
            f"{time.perf_counter() - start:.2f} seconds",
        )
        dxo.data = {**plain, **tensors}
        dxo.remove_meta_props(
            [
                MetaKey.PROCESSED_ALGORITHM,
                MetaKey.PROCESSED_KEYS,
                LAYOUT_META_KEY,
                WEIGHT_SUM_META_KEY,
                RAW_WEIGHT_SUM_META_KEY,
            ]
        )
        dxo.update_shareable(shareable)
        fl_ctx.set_prop(RECEIVED_MODEL_PROP, dict(dxo.data), private=True, sticky=False)
        raw = float(raw_sum) if raw_sum is not None else None
        fl_ctx.set_prop(RECEIVED_RAW_WEIGHT_SUM_PROP, raw, private=True, sticky=False)
        return dxo
