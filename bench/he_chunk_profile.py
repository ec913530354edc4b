"""Where one packed chunk's CPU goes when a site encrypts it, step by step, at ``--he``'s CKKS parameters.

    PYTHONPATH=. .venv/bin/python bench/he_chunk_profile.py [--chunks 2000]

The steps of :func:`clara_fl.fl.he_packing.encrypt_packed` for one chunk of a slot count's values: the values as a
list, SEAL's encoding, SEAL's symmetric encryption, SEAL's seeded ``save`` (to tmpfs, where a site writes it) and
reading the bytes back. CPU seconds of this process (``time.process_time``), so a busy machine inflates them little.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

STEPS = ("as list", "encode", "encrypt", "seeded save", "read back")


def main() -> None:
    import tenseal as ts
    import tenseal.sealapi as sealapi

    from clara_fl.fl.jobs.he_context import CKKS_PARAMETERS

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000)
    args = parser.parse_args()
    degree, bits = CKKS_PARAMETERS["poly_modulus_degree"], CKKS_PARAMETERS["coeff_mod_bit_sizes"]
    context = ts.context(ts.SCHEME_TYPE.CKKS, degree, -1, bits, ts.ENCRYPTION_TYPE.SYMMETRIC)
    context.global_scale = 2 ** CKKS_PARAMETERS["scale_bits"]
    seal_context = context.seal_context().data
    encoder = sealapi.CKKSEncoder(seal_context)
    encryptor = sealapi.Encryptor(seal_context, context.secret_key().data)
    values = np.random.default_rng(0).normal(0.0, 0.05, size=(args.chunks, degree // 2))
    plain = sealapi.Plaintext()
    spent = dict.fromkeys(STEPS, 0.0)
    memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=memory) as folder:
        path = os.path.join(folder, "chunk")
        for row in values:
            t0 = time.process_time()
            as_list = row.tolist()
            t1 = time.process_time()
            encoder.encode(as_list, context.global_scale, plain)
            t2 = time.process_time()
            ciphertext = encryptor.encrypt_symmetric(plain)
            t3 = time.process_time()
            ciphertext.save(path)
            t4 = time.process_time()
            with open(path, "rb") as f:
                f.read()
            t5 = time.process_time()
            for step, seconds in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                spent[step] += seconds
    print(f"degree {degree}, {bits}, {degree // 2} values a chunk, {args.chunks} chunks; CPU ms per chunk:")
    for step, seconds in spent.items():
        print(f"  {step:12s} {seconds / args.chunks * 1e3:.3f}")
    print(f"  {'total':12s} {sum(spent.values()) / args.chunks * 1e3:.3f}")


if __name__ == "__main__":
    main()
