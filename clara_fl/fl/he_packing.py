"""Packing a model's tensors into few CKKS vectors for homomorphic encryption (TenSEAL and numpy only).

FLARE's ``HEModelEncryptor`` makes one ``CKKSVector`` per tensor: a tensor of 16 values takes a whole ciphertext
(poly_modulus_degree / 2 slots, 4096 with FLARE's HEBuilder context), and FLARE's CKKSVector decomposer sends
every vector with its own copy of the public context. Here the selected tensors are flattened, in the model's
order, into one stream cut into chunks of exactly one ciphertext's slots; each chunk is one ``CKKSVector``
(measured on HEBuilder's context: explicit one-ciphertext chunks encrypt, serialize, add and decrypt faster than
one long vector that TenSEAL splits internally). The :class:`PackedLayout` (names, shapes, dtypes, chunk size)
travels in plain DXO metadata; the receiver rebuilds the tensors from it. Chunks are serialized without any
context: the receiver loads them with the context it already holds.

A site holds the secret key, so it encrypts symmetrically and sends each chunk *seeded*: SEAL's symmetric
ciphertext is two polynomials of which the second is pseudo-random, and its serialization keeps only the first and
the PRNG seed (half the bytes; TenSEAL's own ``CKKSVector.serialize()`` writes both). The seeded SEAL ciphertext
goes into TenSEAL's ``CKKSVectorProto`` (``tenseal/proto/tensors.proto``), so the receiver reads it with
``ts.ckks_vector_from`` like any vector; SEAL expands the seed on load. What the server sends back (a sum) is an
ordinary vector.

Packed chunks are keyed :data:`PACKED_PREFIX` + index in the DXO data, so FLARE's aggregator adds them key by
key like any tensor. The server only adds: every chunk stays at the top (and only) data level of the modulus
chain, so a chain of one data prime suffices (``clara_fl.fl.jobs.he_context.CKKS_PARAMETERS``);
:func:`value_bound` is the largest magnitude a sum may reach under a context before it wraps around the modulus.

The sites' weights are normalized by a factor common to all of them (:func:`used_weight`), so that the weights the
server adds sum to about :data:`WEIGHT_SUM_TARGET` whatever the steps; each site keeps its share under
:func:`share_bound`, so a sum of up to :data:`MAX_SITES` shares stays under :func:`value_bound`.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "LAYOUT_META_KEY",
    "MAX_SITES",
    "PACKED_PREFIX",
    "RAW_WEIGHT_META_KEY",
    "RAW_WEIGHT_SUM_META_KEY",
    "USED_WEIGHT_META_KEY",
    "WEIGHT_SUM_META_KEY",
    "WEIGHT_SUM_TARGET",
    "PackedLayout",
    "decrypt_packed",
    "deserialize_packed",
    "encrypt_packed",
    "is_packed_key",
    "pack_plain",
    "select_layers",
    "serialize_packed",
    "share_bound",
    "slot_count",
    "unpack",
    "used_weight",
    "value_bound",
]

PACKED_PREFIX = "__clara_he_packed__."
LAYOUT_META_KEY = "clara_he_layout"
# the sum of the weights the sites multiplied their updates by: the receiver divides the decrypted sum by it
WEIGHT_SUM_META_KEY = "clara_he_weight_sum"
# the sum of the sites' raw weights (aggregation weight x steps) of the round that made a global model: the next
# round's common normalization
RAW_WEIGHT_SUM_META_KEY = "clara_he_raw_weight_sum"
# what a site states in its update's plain metadata: the weight it multiplied by, and its raw weight
USED_WEIGHT_META_KEY = "clara_he_weight"
RAW_WEIGHT_META_KEY = "clara_he_raw_weight"
# what the used weights of a round sum to when the sites' raw weights sum to the previous round's
WEIGHT_SUM_TARGET = 16.0
# the most shares the server adds in a round; each site keeps its share under value_bound / MAX_SITES
MAX_SITES = 64


def is_packed_key(key: str) -> bool:
    """Whether a DXO data key holds a packed chunk."""
    return key.startswith(PACKED_PREFIX)


def slot_count(context: Any) -> int:
    """The values one CKKS ciphertext holds under a TenSEAL ``context``: poly_modulus_degree / 2."""
    parms = context.seal_context().data.key_context_data().parms()
    return int(parms.poly_modulus_degree()) // 2


def value_bound(context: Any) -> float:
    """The largest magnitude a (summed) value may reach under ``context`` at its scale: a quarter of the fresh
    ciphertexts' coefficient modulus, over the scale (a CKKS value wraps around at half the modulus)."""
    data_bits = int(context.seal_context().data.first_context_data().total_coeff_modulus_bit_count())
    return float(2.0 ** (data_bits - 2) / context.global_scale)


def share_bound(context: Any) -> float:
    """The largest magnitude one site's weighted values may reach: :func:`value_bound` over :data:`MAX_SITES`, so
    that the server's sum of up to MAX_SITES shares cannot wrap around."""
    return value_bound(context) / MAX_SITES


def used_weight(aggregation_weight: float, steps: float, previous_raw_sum: float | None) -> float:
    """The weight a site multiplies its weights by: its raw weight ``aggregation_weight x steps`` (FLARE's rule)
    divided by a factor common to every site of the round.

    From the second round on that factor is ``previous_raw_sum / WEIGHT_SUM_TARGET`` (the raw weights of the round
    that made the received global model sum to ``previous_raw_sum``), so the round's used weights sum to about
    WEIGHT_SUM_TARGET and their ratios are FedAvg's. In the first round (``previous_raw_sum`` None) no common
    factor is known: each site divides by its own ``steps``, so the first round weighs by aggregation weights alone.

    Args:
        aggregation_weight: the site's aggregation weight.
        steps: the site's steps in the round (1 where the steps do not weigh).
        previous_raw_sum: the raw weight sum in the received global model's metadata, or None.

    Raises:
        ValueError: ``previous_raw_sum`` is not positive.
    """
    if previous_raw_sum is None:
        return float(aggregation_weight)
    if not previous_raw_sum > 0:
        raise ValueError(f"the previous round's raw weight sum must be positive, got {previous_raw_sum}")
    return float(aggregation_weight) * float(steps) * WEIGHT_SUM_TARGET / float(previous_raw_sum)


def select_layers(names: Sequence[str], encrypt_layers: Sequence[str] | str | bool | None) -> list[str]:
    """The names to encrypt, in ``names``' order: all for None or True, the listed ones for a list, those a regular
    expression finds (``re.search``) for a string (FLARE's ``encrypt_layers`` rule).

    Raises:
        ValueError: the selection matches none of ``names``.
    """
    if encrypt_layers is None or encrypt_layers is True:
        selected = list(names)
    elif isinstance(encrypt_layers, str):
        pattern = re.compile(encrypt_layers)
        selected = [n for n in names if pattern.search(n)]
    elif isinstance(encrypt_layers, bool):
        selected = []
    else:
        wanted = set(encrypt_layers)
        selected = [n for n in names if n in wanted]
    if not selected:
        raise ValueError(f"encrypt_layers {encrypt_layers!r} matches none of the model's {len(names)} tensors")
    return selected


@dataclass(frozen=True)
class PackedLayout:
    """Where each selected tensor lies in the packed stream: names, shapes and dtypes in stream order, and the chunk
    size (one ciphertext's slots)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    chunk_size: int

    @classmethod
    def of(cls, params: Mapping[str, Any], selected: Sequence[str], chunk_size: int) -> PackedLayout:
        """The layout of ``selected`` tensors of ``params``, packed in chunks of ``chunk_size`` values."""
        arrays = [np.asarray(params[n]) for n in selected]
        return cls(
            names=tuple(selected),
            shapes=tuple(tuple(int(d) for d in a.shape) for a in arrays),
            dtypes=tuple(str(a.dtype) for a in arrays),
            chunk_size=int(chunk_size),
        )

    @property
    def sizes(self) -> list[int]:
        return [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def keys(self) -> list[str]:
        """The DXO data keys of the chunks, in stream order."""
        n_chunks = -(-self.total // self.chunk_size)
        return [f"{PACKED_PREFIX}{i:06d}" for i in range(n_chunks)]

    def to_meta(self) -> dict[str, Any]:
        """Plain data for DXO metadata (lists, strings and ints)."""
        return {
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            "dtypes": list(self.dtypes),
            "chunk_size": self.chunk_size,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> PackedLayout:
        """The layout :meth:`to_meta` wrote.

        Raises:
            ValueError: ``meta`` is not such a layout.
        """
        try:
            names, shapes, dtypes = list(meta["names"]), list(meta["shapes"]), list(meta["dtypes"])
            chunk_size = int(meta["chunk_size"])
            layout = cls(
                names=tuple(str(n) for n in names),
                shapes=tuple(tuple(int(d) for d in s) for s in shapes),
                dtypes=tuple(str(np.dtype(d)) for d in dtypes),
                chunk_size=chunk_size,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a packed HE layout: {e}") from e
        if not (len(layout.names) == len(layout.shapes) == len(layout.dtypes)) or chunk_size <= 0:
            raise ValueError("not a packed HE layout: names, shapes and dtypes differ in length")
        return layout


def pack_plain(params: Mapping[str, Any], layout: PackedLayout, scale: float = 1.0) -> dict[str, np.ndarray]:
    """The layout's tensors of ``params`` times ``scale`` as float64 chunks, keyed like the encrypted ones (the last
    chunk is shorter when the stream does not fill it).

    Raises:
        ValueError: a tensor is missing or its size differs from the layout's.
    """
    parts = []
    for name, size in zip(layout.names, layout.sizes, strict=True):
        if name not in params:
            raise ValueError(f"{name} is in the packed layout but not in the model")
        flat = np.asarray(params[name], dtype=np.float64).ravel()
        if flat.size != size:
            raise ValueError(f"{name} has {flat.size} values, the packed layout {size}")
        parts.append(flat)
    stream = np.concatenate(parts) if parts else np.zeros(0)
    if scale != 1.0:
        stream = stream * np.float64(scale)
    step = layout.chunk_size
    return {key: stream[i * step : (i + 1) * step] for i, key in enumerate(layout.keys)}


_SHM = "/dev/shm"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _ckks_vector_proto(ciphertext: bytes, size: int, scale: float) -> bytes:
    """TenSEAL's ``CKKSVectorProto`` of one SEAL ciphertext: sizes = 1, ciphertexts = 2, scale = 3 (a double)."""
    sizes = _varint(size)
    return b"".join(
        (b"\x0a", _varint(len(sizes)), sizes, b"\x12", _varint(len(ciphertext)), ciphertext, b"\x19")
    ) + struct.pack("<d", scale)


def encrypt_packed(
    context: Any, params: Mapping[str, Any], layout: PackedLayout, scale: float = 1.0
) -> dict[str, bytes]:
    """The layout's tensors of ``params`` times ``scale``, packed and encrypted with the secret key (seeded
    symmetric ciphertexts): ``{chunk key: serialized CKKSVector}``, read with ``ts.ckks_vector_from``.

    Raises:
        ValueError: ``context`` holds no secret key, a tensor is missing or its size differs from the layout's.
    """
    import tenseal.sealapi as sealapi

    if not context.is_private():
        raise ValueError("encrypting packed chunks needs the site's TenSEAL context with the secret key")
    seal_context = context.seal_context().data
    encoder = sealapi.CKKSEncoder(seal_context)
    encryptor = sealapi.Encryptor(seal_context, context.secret_key().data)
    ckks_scale = float(context.global_scale)
    encrypted: dict[str, bytes] = {}
    plain = sealapi.Plaintext()
    # SEAL writes a seeded ciphertext (Serializable<Ciphertext>) only to a stream, which TenSEAL binds as a path: in
    # memory where there is a tmpfs (measured: 1.3 ms a chunk there, 4.5 ms on the disk's /tmp)
    memory = _SHM if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="clara_he_", dir=memory) as folder:
        path = os.path.join(folder, "chunk")
        for key, chunk in pack_plain(params, layout, scale).items():
            encoder.encode(chunk.tolist(), ckks_scale, plain)
            encryptor.encrypt_symmetric(plain).save(path)
            with open(path, "rb") as f:
                encrypted[key] = _ckks_vector_proto(f.read(), chunk.size, ckks_scale)
    return encrypted


def serialize_packed(vectors: Mapping[str, Any]) -> dict[str, bytes]:
    """Each chunk as its ciphertext bytes, no context: the receiver holds the context."""
    return {k: v if isinstance(v, bytes) else v.serialize() for k, v in vectors.items()}


def deserialize_packed(context: Any, serialized: Mapping[str, Any]) -> dict[str, Any]:
    """Each chunk's bytes as a ``CKKSVector`` under ``context`` (loaded once by the caller); vectors stay."""
    import tenseal as ts

    return {k: ts.ckks_vector_from(context, v) if isinstance(v, bytes) else v for k, v in serialized.items()}


def unpack(chunks: Mapping[str, Any], layout: PackedLayout) -> dict[str, np.ndarray]:
    """The tensors from plain chunks (decrypted values or arrays), reshaped and cast to their recorded dtypes
    (integers rounded: a step counter decrypts as 2.9999...).

    Raises:
        ValueError: a chunk is missing or the chunks hold fewer values than the layout.
    """
    missing = [k for k in layout.keys if k not in chunks]
    if missing:
        raise ValueError(f"{len(missing)} packed chunks missing (e.g. {missing[0]})")
    stream = np.concatenate([np.asarray(chunks[k], dtype=np.float64).ravel() for k in layout.keys])
    if stream.size < layout.total:
        raise ValueError(f"the packed chunks hold {stream.size} values, the layout {layout.total}")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape, dtype, size in zip(layout.names, layout.shapes, layout.dtypes, layout.sizes, strict=True):
        values = stream[offset : offset + size]
        offset += size
        target = np.dtype(dtype)
        if np.issubdtype(target, np.integer):
            values = np.rint(values)
        tensors[name] = values.reshape(shape).astype(target)
    return tensors


def decrypt_packed(
    context: Any, packed: Mapping[str, Any], layout: PackedLayout, divisor: float = 1.0
) -> dict[str, np.ndarray]:
    """The tensors from encrypted chunks (``CKKSVector`` or their bytes) with the secret ``context``, divided by
    ``divisor`` (the sum of the weights of a weighted sum) after decryption.

    Raises:
        ValueError: a chunk is missing, the context holds no secret key, or ``divisor`` is not positive.
    """
    if not context.is_private():
        raise ValueError("decrypting needs a TenSEAL context with the secret key")
    if not divisor > 0:
        raise ValueError(f"the weight sum to divide by must be positive, got {divisor}")
    vectors = deserialize_packed(context, {k: packed[k] for k in layout.keys if k in packed})
    return unpack({k: np.asarray(v.decrypt(), dtype=np.float64) / divisor for k, v in vectors.items()}, layout)
