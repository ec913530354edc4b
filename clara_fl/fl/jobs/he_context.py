"""TenSEAL contexts for ``--he`` jobs where no provisioning made them: the simulator's workspace, POC kits.

FLARE's provisioning (``nvflare.lighter.impl.he.HEBuilder``) writes ``server_context.tenseal`` (public: no secret
key) into the server's startup kit and ``client_context.tenseal`` (with the secret key) into each site's; the HE
components load them from their participant's startup folder. This module makes the same pair with HEBuilder and
clara-fl's parameters (:data:`CKKS_PARAMETERS`), for the places clara-fl sets up itself; a deployment gives HEBuilder
the same arguments in its ``project.yml`` (docs/fl.md).

Why these parameters: the sites weigh their updates before encrypting and the server only adds ciphertexts, so
no ciphertext is ever rescaled and one data prime suffices (HEBuilder's default chain [60, 40, 40] with scale 2^40
is made for one multiplication). Degree 2048 with 36 + 18 bits is at SEAL's bound for 128-bit security (54 bits at
this degree; SEAL refuses more). A fresh symmetric ciphertext decrypts within ~400 / 2^20 (4e-4) of its values, and
a sum of k updates within ~sqrt(k) times that before the division by the weight sum, so the global model agrees
with the plain weighted mean well within 1e-3 when the weights sum to a few units or more.

What is guaranteed: a CKKS value wraps around at half the modulus (2^35 / 2^20 = 32768 here); clara-fl keeps every
sum under a quarter (:func:`~clara_fl.fl.he_packing.value_bound`, 16384). Each site's share (the weight it used
times its largest encrypted absolute value) stays under 16384 / MAX_SITES (64 sites: 256), or the site refuses
to send it (one line); the server adds at most MAX_SITES shares a round, or fails the round (one line in its log).
So no sum of a round wraps: a global model is right or there is none. The weights are normalized
(:func:`~clara_fl.fl.he_packing.used_weight`) so that the shares stay small whatever the steps: from the second
round on each site multiplies by aggregation weight x steps x WEIGHT_SUM_TARGET (16) / the previous round's sum
of aggregation weight x steps (plain metadata of the global model), so the weights sum to about 16 (exact FedAvg
ratios; the error ~4e-4 x sqrt(sites) / 16, the headroom 256 / a site's weight); the first round, which has no
previous sum, weighs by the aggregation weights alone. Values the size of a network's weights are far inside.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from clara_fl.config.errors import UsageError

__all__ = [
    "CKKS_PARAMETERS",
    "CLIENT_CONTEXT",
    "HE_EXTRA_HINT",
    "SERVER_CONTEXT",
    "job_uses_he",
    "require_tenseal",
    "tenseal_contexts",
    "write_he_contexts",
    "write_simulator_he_contexts",
]

SERVER_CONTEXT = "server_context.tenseal"
# HEBuilder's arguments (also valid in a project.yml's HEBuilder args)
CKKS_PARAMETERS: dict[str, Any] = {"poly_modulus_degree": 2048, "coeff_mod_bit_sizes": [36, 18], "scale_bits": 20}
CLIENT_CONTEXT = "client_context.tenseal"
# FLARE's HE components, and clara-fl's packing ones (clara_fl.recipes.he)
_HE_MARKERS = ("nvflare.app_opt.he.", "clara_fl.fl.site.he_filters.", "clara_fl.fl.server.he.")


HE_EXTRA_HINT = "homomorphic encryption needs TenSEAL: pip install clara-fl[he]"


def require_tenseal(option: str = "--he") -> None:
    """Refuse homomorphic encryption where TenSEAL is not installed; imports nothing.

    Args:
        option: the option that asks for it.

    Raises:
        UsageError: TenSEAL is not installed (one line naming ``option``, the install hint).
    """
    if importlib.util.find_spec("tenseal") is None:
        raise UsageError(option, None, HE_EXTRA_HINT)


def job_uses_he(job: str | os.PathLike) -> bool:
    """Whether any app config of the job folder names one of FLARE's or clara-fl's HE components."""
    for config in Path(job).glob("*/config/config_fed_*.json"):
        try:
            text = json.dumps(json.loads(config.read_text()))
        except (OSError, ValueError):
            continue
        if any(marker in text for marker in _HE_MARKERS):
            return True
    return False


def tenseal_contexts() -> tuple[bytes, bytes]:
    """A fresh CKKS context with :data:`CKKS_PARAMETERS`, serialized by FLARE's HEBuilder: (server's, without the
    secret key; sites', with it).

    Raises:
        UsageError: TenSEAL is not installed (the one-line ``--he: ... pip install clara-fl[he]`` hint).
    """
    require_tenseal()
    from nvflare.lighter.impl.he import HEBuilder

    builder = HEBuilder(**CKKS_PARAMETERS)  # CKKS, symmetric encryption (HEBuilder's)
    builder.initialize(project=None, ctx=None)
    return builder.get_serialized_context(is_client=False), builder.get_serialized_context(is_client=True)


def write_he_contexts(server_startup: str | None, client_startups: list[str]) -> None:
    """Write one context pair: the server's into ``server_startup``, the sites' into each of ``client_startups``.

    Raises:
        UsageError: TenSEAL is not installed (``--he: ...``).
    """
    server_context, client_context = tenseal_contexts()
    if server_startup is not None:
        os.makedirs(server_startup, exist_ok=True)
        Path(server_startup, SERVER_CONTEXT).write_bytes(server_context)
    for startup in client_startups:
        os.makedirs(startup, exist_ok=True)
        Path(startup, CLIENT_CONTEXT).write_bytes(client_context)


def write_simulator_he_contexts(workspace: str | os.PathLike) -> str:
    """Both contexts into the simulator's WORKSPACE/startup, which FLARE's simulator copies into every participant's
    startup folder (so in a simulation the server's folder holds the sites' context too: one machine, one owner).

    Returns the startup folder.

    Raises:
        UsageError: TenSEAL is not installed (``--he: ...``).
    """
    startup = os.path.join(os.path.abspath(workspace), "startup")
    write_he_contexts(startup, [startup])
    return startup
