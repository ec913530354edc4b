"""What ``--he`` costs per round for an MMAR's network: bytes one site sends and the CPU time of FLARE's HE steps.

    PYTHONPATH=. python bench/he_cost.py mmars/spleen_ct_seg [--channels 4,8,16,32,64]

Measures, on a train result like the one a clara-fl site sends (a WEIGHT_DIFF of the MMAR's network):
- the bytes on the wire: the numpy arrays (plain) and, encrypted as HEModelEncryptor does, what FLARE's
  CKKSVectorDecomposer sends for each tensor (the serialized vector and its public context);
- encryption (site), encrypted aggregation of two updates (server, HEInTimeAccumulateWeightedAggregator's
  arithmetic), decryption (site), against the plain aggregation;
- under "packed", the same with clara-fl's packing (``clara_fl.fl.he_packing``, what ``--he`` jobs send now).
The TenSEAL context is HEBuilder's (CKKS, poly modulus 8192, [60, 40, 40], scale 2**40), as clara-fl's simulator
and FLARE's provisioning make it. Round time with and without HE: run the same job both ways
(``clara-fl job create ... [--he]`` then ``clara-fl simulate``) and read the server log's round lines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def network_diff(mmar: Path, channels: list[int] | None) -> dict[str, np.ndarray]:
    """A WEIGHT_DIFF-sized update of the MMAR's network (narrowed to ``channels`` when given): small random values."""
    import shutil
    import tempfile

    from clara_fl.fl.site.weights import network_weights
    from clara_fl.workflows.network import build_train_network

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "mmar"
        shutil.copytree(mmar / "config", copy / "config")
        if channels:
            train = copy / "config" / "config_train.json"
            config = json.loads(train.read_text())
            config["train"]["model"]["args"]["channels"] = channels
            train.write_text(json.dumps(config))
        weights = network_weights(build_train_network(str(copy)))
    rng = np.random.default_rng(0)
    return {k: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in weights.items()}


def packed_cost(client: Any, server: Any, diff: dict[str, np.ndarray]) -> dict[str, Any]:
    """The same steps with clara-fl's packing (clara_fl.fl.he_packing): one-ciphertext chunks sent without a context,
    read by the server under its own public context."""
    from clara_fl.fl.he_packing import (
        PackedLayout,
        decrypt_packed,
        deserialize_packed,
        encrypt_packed,
        serialize_packed,
        slot_count,
    )

    layout = PackedLayout.of(diff, list(diff), slot_count(client))
    start = time.perf_counter()
    sent = serialize_packed(encrypt_packed(client, diff, layout, scale=6.0))
    encrypt_s = time.perf_counter() - start
    start = time.perf_counter()
    vectors = deserialize_packed(server, sent)
    total = {k: (v + v) * (1.0 / 12.0) for k, v in vectors.items()}
    returned = serialize_packed(total)
    aggregate_s = time.perf_counter() - start
    start = time.perf_counter()
    decrypted = decrypt_packed(client, returned, layout)
    decrypt_s = time.perf_counter() - start
    return {
        "ciphertexts": len(sent),
        "bytes_per_update_he": sum(len(b) for b in sent.values()),
        "bytes_global_model_he": sum(len(b) for b in returned.values()),
        "encrypt_and_serialize_s": round(encrypt_s, 2),
        "read_aggregate_2_and_serialize_s": round(aggregate_s, 2),
        "read_and_decrypt_s": round(decrypt_s, 2),
        "max_abs_error_after_round_trip": max(float(np.max(np.abs(decrypted[k] - diff[k]))) for k in diff),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mmar", type=Path)
    parser.add_argument("--channels", help="a narrower UNet, e.g. 4,8,16,32,64")
    args = parser.parse_args()
    channels = [int(c) for c in args.channels.split(",")] if args.channels else None

    import tenseal as ts

    from clara_fl.fl.jobs.he_context import tenseal_contexts

    server_bytes, client_bytes = tenseal_contexts()
    client = ts.context_from(client_bytes)
    diff = network_diff(args.mmar, channels)
    n_weights = sum(v.size for v in diff.values())
    plain_size = sum(v.nbytes for v in diff.values())  # FLARE streams numpy arrays as they are (np.save)

    start = time.perf_counter()
    encrypted = {k: ts.ckks_vector(client, (v.ravel() * 6.0).tolist()) for k, v in diff.items()}
    encrypt_s = time.perf_counter() - start
    # what FLARE's CKKSVectorDecomposer puts on the wire for each tensor: the vector and its (public) context
    vector_bytes = sum(len(v.serialize()) for v in encrypted.values())
    context_bytes = sum(len(v.context().serialize()) for v in encrypted.values())
    encrypted_size = vector_bytes + context_bytes

    start = time.perf_counter()
    total = {k: (v + v) * (1.0 / 12.0) for k, v in encrypted.items()}
    aggregate_s = time.perf_counter() - start
    start = time.perf_counter()
    _ = {k: (v + v) * (1.0 / 12.0) for k, v in diff.items()}
    plain_aggregate_s = time.perf_counter() - start
    start = time.perf_counter()
    decrypted = {k: np.asarray(v.decrypt()) for k, v in total.items()}
    decrypt_s = time.perf_counter() - start
    error = max(float(np.max(np.abs(decrypted[k] - diff[k].ravel()))) for k in diff)

    packed = packed_cost(client, ts.context_from(server_bytes), diff)

    print(
        json.dumps(
            {
                "packed": packed,
                "mmar": str(args.mmar),
                "channels": channels,
                "weights": int(n_weights),
                "tensors": len(diff),
                "bytes_per_update_plain": plain_size,
                "bytes_per_update_he": encrypted_size,
                "bytes_per_update_he_vectors": vector_bytes,
                "bytes_per_update_he_contexts": context_bytes,
                "bytes_ratio": round(encrypted_size / plain_size, 1),
                "server_context_bytes": len(server_bytes),
                "encrypt_s": round(encrypt_s, 2),
                "aggregate_2_updates_s_he": round(aggregate_s, 2),
                "aggregate_2_updates_s_plain": round(plain_aggregate_s, 4),
                "decrypt_s": round(decrypt_s, 2),
                "max_abs_error_after_round_trip": error,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
