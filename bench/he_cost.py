"""What ``--he`` costs per round for an MMAR's network, per CKKS setting: bytes a site sends, CPU time, accuracy.

    PYTHONPATH=. python bench/he_cost.py mmars/spleen_ct_seg [--channels 4,8,16,32,64] [--sites 8]

Measures, on updates of the MMAR's network (its initial float tensors plus Gaussian changes of 0.05, from ``--sites``
sites with unequal weights 5, 10, 15, ...), for each setting below:
- bytes per value a site sends (serialized ciphertexts, no context) and the ratio to float32;
- encrypt seconds per update (site), read + add of all sites' updates and serialize seconds (server), read +
  decrypt + divide seconds (site), per update;
- the largest absolute error of the decrypted weighted mean against the plain one (float64).

Settings: FLARE's HEBuilder default (degree 8192, [60, 40, 40], scale 2^40; TenSEAL's unseeded serialization,
the server dividing by the weight sum in encrypted space as FLARE's aggregator does), and clara-fl's packing with
the sites weighing, the server only adding, seeded symmetric ciphertexts, at smaller chains
(``clara_fl.fl.jobs.he_context``'s CKKS_PARAMETERS is the one ``--he`` jobs use). Round time with and without HE: figure 9 (``bench/run.py --figures 9``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

# (name, degree, coeff_mod_bit_sizes, scale bits, seeded sites / server only adds)
SETTINGS: list[tuple[str, int, list[int], int, bool]] = [
    ("flare_default_8192_60-40-40_2^40", 8192, [60, 40, 40], 40, False),
    ("seeded_8192_60-40-40_2^40", 8192, [60, 40, 40], 40, True),
    ("seeded_4096_40-40_2^20", 4096, [40, 40], 20, True),
    ("seeded_2048_38-16_2^20", 2048, [38, 16], 20, True),
    ("seeded_8192_36-18_2^20", 8192, [36, 18], 20, True),
    ("seeded_4096_36-18_2^20", 4096, [36, 18], 20, True),
    ("seeded_2048_36-18_2^20", 2048, [36, 18], 20, True),
    ("seeded_2048_32-22_2^16", 2048, [32, 22], 16, True),
]


def network_weights_like(mmar: Path, channels: list[int] | None) -> dict[str, np.ndarray]:
    """The MMAR's network's float tensors (narrowed to ``channels`` when given)."""
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
    return {k: v for k, v in weights.items() if np.issubdtype(v.dtype, np.floating)}


def contexts(degree: int, bits: list[int], scale_bits: int) -> tuple[Any, Any]:
    """(sites' context with the secret key, server's public one), symmetric as FLARE's HEBuilder makes them."""
    import tenseal as ts
    from nvflare.lighter.impl.he import HEBuilder

    builder = HEBuilder(poly_modulus_degree=degree, coeff_mod_bit_sizes=bits, scale_bits=scale_bits)
    builder.initialize(project=None, ctx=None)
    return (
        ts.context_from(builder.get_serialized_context(is_client=True)),
        ts.context_from(builder.get_serialized_context(is_client=False)),
    )


def measure(
    updates: list[dict[str, np.ndarray]],
    weights: list[float],
    degree: int,
    bits: list[int],
    scale_bits: int,
    seeded: bool,
) -> dict[str, Any]:
    import tenseal as ts

    from clara_fl.fl.he_packing import (
        PackedLayout,
        decrypt_packed,
        deserialize_packed,
        encrypt_packed,
        pack_plain,
        serialize_packed,
        slot_count,
    )

    client, server = contexts(degree, bits, scale_bits)
    names = list(updates[0])
    layout = PackedLayout.of(updates[0], names, slot_count(client))
    n_values = layout.total
    total_weight = float(sum(weights))
    sent: list[dict[str, bytes]] = []
    encrypt_s = encrypt_cpu = 0.0
    for update, weight in zip(updates, weights, strict=True):
        start, cpu = time.perf_counter(), time.process_time()
        if seeded:  # clara-fl: the site weighs and sends seeded symmetric ciphertexts
            sent.append(encrypt_packed(client, update, layout, weight))
        else:  # FLARE: the site weighs in the clear, TenSEAL's (unseeded) serialization
            plain = pack_plain(update, layout, weight)
            sent.append(serialize_packed({k: ts.ckks_vector(client, c) for k, c in plain.items()}))
        encrypt_s += time.perf_counter() - start
        encrypt_cpu += time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    total: dict[str, Any] = {}
    for chunks in sent:
        vectors = deserialize_packed(server, chunks)
        for k, v in vectors.items():
            total[k] = v if k not in total else total[k] + v
    if not seeded:
        total = {k: v * (1.0 / total_weight) for k, v in total.items()}  # FLARE divides in encrypted space (a rescale)
    returned = serialize_packed(total)
    aggregate_s, aggregate_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    decrypted = decrypt_packed(client, returned, layout, total_weight if seeded else 1.0)
    decrypt_s, decrypt_cpu = time.perf_counter() - start, time.process_time() - cpu
    expected = {
        k: sum(w * u[k].astype(np.float64) for u, w in zip(updates, weights, strict=True)) / total_weight for k in names
    }
    sent_bytes = sum(len(b) for b in sent[0].values())
    n = len(updates)
    return {
        "bytes_per_value": round(sent_bytes / n_values, 2),
        "bytes_ratio_to_float32": round(sent_bytes / (4 * n_values), 2),
        "bytes_per_update_MB": round(sent_bytes / 1e6, 1),
        "global_model_MB": round(sum(len(b) for b in returned.values()) / 1e6, 1),
        "ciphertexts_per_update": len(sent[0]),
        "encrypt_s_per_update": round(encrypt_s / n, 2),
        "aggregate_s_per_update": round(aggregate_s / n, 2),
        "decrypt_s": round(decrypt_s, 2),
        # CPU seconds of this process (all its threads): what a busy shared machine inflates least
        "encrypt_cpu_s_per_update": round(encrypt_cpu / n, 2),
        "aggregate_cpu_s_per_update": round(aggregate_cpu / n, 2),
        "decrypt_cpu_s": round(decrypt_cpu, 2),
        "max_abs_error_vs_plain": float(max(np.max(np.abs(decrypted[k] - expected[k])) for k in names)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mmar", type=Path)
    parser.add_argument("--channels", help="a narrower UNet, e.g. 4,8,16,32,64")
    parser.add_argument("--sites", type=int, default=2, help="updates aggregated (unequal weights: 1, 2, ... steps)")
    parser.add_argument("--only", help="settings whose name contains this text")
    args = parser.parse_args()
    channels = [int(c) for c in args.channels.split(",")] if args.channels else None

    model = network_weights_like(args.mmar, channels)
    rng = np.random.default_rng(0)
    updates = [{k: (v + rng.standard_normal(v.shape) * 0.05).astype(np.float32) for k, v in model.items()}]
    updates += [{k: (v + rng.standard_normal(v.shape) * 0.05).astype(np.float32) for k, v in updates[0].items()}]
    updates = [updates[i % 2] for i in range(args.sites)]
    weights = [float(5 * (i + 1)) for i in range(args.sites)]  # steps x aggregation weight, unequal
    results: dict[str, Any] = {
        "mmar": str(args.mmar),
        "channels": channels,
        "float_values": int(sum(v.size for v in model.values())),
        "sites": args.sites,
        "weights": weights,
    }
    for name, degree, bits, scale_bits, seeded in SETTINGS:
        if args.only and args.only not in name:
            continue
        results[name] = measure(updates, weights, degree, bits, scale_bits, seeded)
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
