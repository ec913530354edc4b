"""The sites' HE filters: FLARE's ``HEModelEncryptor`` / ``HEModelDecryptor`` with packed CKKS vectors (needs TenSEAL:
``pip install clara-fl[he]``).

The encryptor packs the selected tensors into one-ciphertext chunks (:mod:`clara_fl.fl.he_packing`) and sends
each chunk's ciphertext bytes without a context; the layout and FLARE's ``PROCESSED_KEYS`` go in plain DXO
metadata. The decryptor unpacks by that layout. Weighing is FLARE's rule: each site multiplies by its steps
(``weigh_by_local_iter``) and its aggregation weight before encrypting, and the server divides by the same
weights.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, MetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_opt.he.constant import HE_ALGORITHM_CKKS
from nvflare.app_opt.he.homomorphic_encrypt import load_tenseal_context_from_workspace
from nvflare.app_opt.he.model_decryptor import HEModelDecryptor as _FlareDecryptor
from nvflare.app_opt.he.model_encryptor import HEModelEncryptor as _FlareEncryptor

from clara_fl.fl.he_packing import (
    LAYOUT_META_KEY,
    PackedLayout,
    decrypt_packed,
    encrypt_packed,
    is_packed_key,
    select_layers,
    serialize_packed,
    slot_count,
)

__all__ = ["HEModelDecryptor", "HEModelEncryptor"]


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
        """Weigh, pack and encrypt the DXO's tensors.

        Args:
            dxo: the site's WEIGHTS or WEIGHT_DIFF.
            shareable: the task result it belongs to.
            fl_ctx: the site's FL context.

        Raises:
            ValueError: the DXO lacks its steps (``NUM_STEPS_CURRENT_ROUND``) while the site weighs, or the selection
                matches no tensor.
        """
        if self.tenseal_context is None:
            self.tenseal_context = load_tenseal_context_from_workspace(self.tenseal_context_file, fl_ctx)
        scale = 1.0
        if self.aggregation_weights:
            # the server divides by the weight it holds for this contributor: the site's own name
            scale *= float(self.aggregation_weights.get(fl_ctx.get_identity_name(), 1.0))
        if self.weigh_by_local_iter:
            steps = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, None)
            if steps is None:
                raise ValueError("DXO data does not have local iterations for weighting!")
            scale *= float(steps)
        params: dict[str, Any] = dxo.data
        start = time.perf_counter()
        selected = select_layers(list(params), _selection(self.encrypt_layers))
        layout = PackedLayout.of(params, selected, slot_count(self.tenseal_context))
        packed = serialize_packed(encrypt_packed(self.tenseal_context, params, layout, scale))
        chosen = set(selected)
        # as FLARE's encryptor sends them: flat and weighed (the site's learner reshapes what it receives)
        plain = {k: np.asarray(v).ravel() * np.float64(scale) for k, v in params.items() if k not in chosen}
        processed = {**{k: True for k in packed}, **{k: False for k in plain}}
        self.log_info(
            fl_ctx,
            f"Encryption time for {layout.total} values of {len(selected)} of {len(params)} tensors in "
            f"{len(packed)} CKKS vectors: {time.perf_counter() - start:.2f} seconds "
            f"({sum(len(b) for b in packed.values()) / 1e6:.1f} MB, no context)",
        )
        new_dxo = DXO(data_kind=dxo.data_kind, data={**packed, **plain}, meta=dxo.meta)
        new_dxo.set_meta_prop(MetaKey.PROCESSED_KEYS, processed)
        new_dxo.set_meta_prop(MetaKey.PROCESSED_ALGORITHM, HE_ALGORITHM_CKKS)
        new_dxo.set_meta_prop(LAYOUT_META_KEY, layout.to_meta())
        return new_dxo


class HEModelDecryptor(_FlareDecryptor):
    """FLARE's HEModelDecryptor (same arguments) for packed models: decrypts the chunks with the site's context and
    rebuilds the tensors by the layout in the DXO's metadata; a model without a layout goes to FLARE's."""

    tenseal_context: Any  # FLARE's: loaded at START_RUN

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        """Decrypt and unpack a packed model; leave a plain one (the first round's) as it is.

        Args:
            dxo: the model the server sent.
            shareable: the task data it belongs to.
            fl_ctx: the site's FL context.

        Raises:
            ValueError: the layout is malformed or a chunk is missing.
        """
        layout_meta = dxo.get_meta_prop(LAYOUT_META_KEY, None)
        if layout_meta is None:
            return super().process_dxo(dxo, shareable, fl_ctx)
        if dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM, None) != HE_ALGORITHM_CKKS:
            self.log_error(fl_ctx, "shareable is not HE CKKS encrypted")
            return None
        if self.tenseal_context is None:
            self.tenseal_context = load_tenseal_context_from_workspace(self.tenseal_context_file, fl_ctx)
        layout = PackedLayout.from_meta(layout_meta)
        start = time.perf_counter()
        data: dict[str, Any] = dxo.data
        tensors = decrypt_packed(self.tenseal_context, data, layout)
        plain = {k: v for k, v in data.items() if not is_packed_key(k)}
        self.log_info(
            fl_ctx,
            f"Decryption time for {layout.total} values in {len(layout.keys)} CKKS vectors: "
            f"{time.perf_counter() - start:.2f} seconds",
        )
        dxo.data = {**plain, **tensors}
        dxo.remove_meta_props([MetaKey.PROCESSED_ALGORITHM, MetaKey.PROCESSED_KEYS, LAYOUT_META_KEY])
        dxo.update_shareable(shareable)
        return dxo
