"""Homomorphic encryption (``--he``) as changes to a job's apps (:mod:`clara_fl.recipes.job_model`): FLARE 2.9's HE
components, with clara-fl's packing.

The sites encrypt what they send with TenSEAL's CKKS scheme and decrypt what they get
(:mod:`clara_fl.fl.site.he_filters`: FLARE's ``HEModelEncryptor`` / ``HEModelDecryptor`` packing the selected
tensors into few CKKS vectors, weighed at the site and sent seeded without a context); the server reads them under
the job's public context, loaded once, only adds them (:mod:`clara_fl.fl.server.he`:
``HEInTimeAccumulateWeightedAggregator``, FLARE's weights summed, the division left to the sites), makes the sum the
encrypted global model (``HEModelShareableGenerator``), stores that model through
FLARE's ``HEModelSerializeFilter`` and runs cross-site evaluation on encrypted models (``HECrossSiteModelEval``).
The server never holds the secret key: ``server_context.tenseal`` in its startup folder has none, the sites'
``client_context.tenseal`` has it (see :mod:`clara_fl.fl.jobs.he_context`).

Plain data only (no nvflare, no tenseal): ``clara-fl job create --he`` writes a job without the HE stack.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.recipes.job_model import ClientApp, Component, ServerApp

__all__ = [
    "HE_LAYERS_ALL",
    "HE_TEMPLATE_WORKFLOW",
    "apply_homomorphic_encryption",
    "check_he_layers",
    "check_he_layers_for_mmar",
    "he_layers_regex",
    "parse_he_layers",
]

_HE = "nvflare.app_opt.he"
_SITE = "clara_fl.fl.site.he_filters"
_SERVER = "clara_fl.fl.server.he"
ENCRYPTOR = f"{_SITE}.HEModelEncryptor"
DECRYPTOR = f"{_SITE}.HEModelDecryptor"
AGGREGATOR = f"{_SERVER}.HEInTimeAccumulateWeightedAggregator"
SHAREABLE_GENERATOR = f"{_SERVER}.HEModelShareableGenerator"
PERSISTOR = f"{_SERVER}.HEClaraModelPersistor"
SERIALIZE_FILTER = f"{_HE}.model_serialize_filter.HEModelSerializeFilter"
# FLARE's HECrossSiteModelEval, made able to send encrypted models (see clara_fl.fl.server.he)
CROSS_SITE_MODEL_EVAL = f"{_SERVER}.HECrossSiteModelEval"
SERIALIZE_FILTER_ID = "he_serialize_filter"
HE_TEMPLATE_WORKFLOW = "scatter_and_gather"
# what the sites decrypt: every task that carries the (encrypted) global model or a server-held model
DECRYPTED_TASKS = ("train", "validate_global_model", "validate")


def apply_homomorphic_encryption(
    server: ServerApp,
    client: ClientApp,
    template: str,
    encrypt_layers: list[str] | str | None = None,
) -> None:
    """Switch a ScatterAndGather job's apps (clara_fedavg_cse and its kind) to FLARE's HE components.

    The updates are weighed by each site's steps and aggregation weight exactly once, at the sites before
    encrypting (HEModelEncryptor, given the aggregator's ``aggregation_weights``): each site sends its weights after
    the round times its weight, normalized by a factor common to the round's sites so that the sum cannot wrap
    around the CKKS modulus (``clara_fl.fl.he_packing.used_weight``), the server adds them and the weights
    (HEInTimeAccumulateWeightedAggregator, no multiplication in encrypted space), and the sites divide the decrypted
    sum by the weight sum. The learner still sends WEIGHT_DIFF, so privacy filters see the update; the encryptor
    applies it to the global model it came from.

    Args:
        server: the job's server app, changed in place.
        client: the job's client app, changed in place.
        template: the template's name, for the error.
        encrypt_layers: HEModelEncryptor's ``encrypt_layers`` (a list of names or a regular expression); None
            encrypts all (the default: nothing leaves a site in the clear).

    Raises:
        ConfigError: the template's server workflow is not ScatterAndGather with the shipped component ids.
    """
    persistor, generator, aggregator = server.persistor, server.shareable_generator, server.aggregator
    if server.workflow(HE_TEMPLATE_WORKFLOW) is None or persistor is None or generator is None or aggregator is None:
        raise ConfigError(
            f"--he needs a ScatterAndGather template with persistor, shareable_generator and aggregator "
            f"(clara_fedavg_cse); '{template}' has none",
            path="--template",
        )
    aggregator_args = {k: v for k, v in aggregator.args.items() if k != "weigh_by_local_iter"}
    aggregator.path = AGGREGATOR
    # the sites send their weighted weights (WEIGHTS), whichever kind the learner sends
    aggregator.args = {**aggregator_args, "expected_data_kind": "WEIGHTS"}
    encryptor_args: dict[str, Any] = {"weigh_by_local_iter": True}
    if encrypt_layers is not None:
        encryptor_args["encrypt_layers"] = encrypt_layers
    if aggregator_args.get("aggregation_weights"):
        # the aggregator sums these weights; the sites must have multiplied by them
        encryptor_args["aggregation_weights"] = aggregator_args["aggregation_weights"]
    generator.path = SHAREABLE_GENERATOR
    generator.args = {}
    if persistor.path.endswith(".ClaraModelPersistor"):
        persistor.path = PERSISTOR
    persistor.args["filter_id"] = SERIALIZE_FILTER_ID
    server.components.insert(0, Component(SERIALIZE_FILTER, {}, SERIALIZE_FILTER_ID))
    cross_site = server.workflow("cross_site_model_eval")
    if cross_site is not None:
        cross_site.path = CROSS_SITE_MODEL_EVAL

    client.add_task_filters("task_data_filters", list(DECRYPTED_TASKS), [Component(DECRYPTOR)])
    # privacy filters (already in the train chain) see plain weights; encryption comes last
    client.add_task_filters("task_result_filters", ["train"], [Component(ENCRYPTOR, encryptor_args)])
    # a site's best model is encrypted too (unweighed): the server keeps it for cross-site evaluation, never reads it
    submitted: dict[str, Any] = {"weigh_by_local_iter": False}
    if encrypt_layers is not None:
        submitted["encrypt_layers"] = encrypt_layers
    client.add_task_filters("task_result_filters", ["submit_model"], [Component(ENCRYPTOR, submitted)])


HE_LAYERS_ALL = "all"
HE_LAYERS_OPTION = "--he-layers"


def parse_he_layers(spec: str | None) -> list[str] | None:
    """``--he-layers``: ``all`` (None: every tensor is encrypted) or comma-separated regular expressions.

    Raises:
        UsageError: an empty expression, or one that does not compile.
    """
    if spec is None or spec.strip() == HE_LAYERS_ALL:
        return None
    parts = [p.strip() for p in spec.split(",")]
    if not all(parts):
        raise UsageError(HE_LAYERS_OPTION, spec, "expected 'all' or comma-separated regular expressions")
    for part in parts:
        try:
            re.compile(part)
        except re.error as e:
            raise UsageError(HE_LAYERS_OPTION, spec, f"'{part}' is not a regular expression ({e})") from None
    return parts


def he_layers_regex(expressions: list[str]) -> str:
    """One regular expression (``encrypt_layers``) that finds a name when any of ``expressions`` does."""
    return expressions[0] if len(expressions) == 1 else "|".join(f"(?:{e})" for e in expressions)


def check_he_layers(encrypt_layers: list[str] | str | None, tensor_names: list[str], option: str) -> None:
    """Refuse a selection that matches none of the network's tensors.

    Args:
        encrypt_layers: a list of tensor names, a regular expression, or None (all).
        tensor_names: the network's ``state_dict`` names.
        option: the option or argument that gave the selection, for the error.

    Raises:
        UsageError: a listed name the network lacks, or an expression that finds no name (one line naming it and an
            example name).
    """
    if encrypt_layers is None:
        return
    example = f" (e.g. {tensor_names[0]})" if tensor_names else ""
    if isinstance(encrypt_layers, str):
        if not any(re.search(encrypt_layers, name) for name in tensor_names):
            raise UsageError(
                option,
                encrypt_layers,
                f"matches none of the {len(tensor_names)} tensors of the MMAR's network{example}",
            )
        return
    unknown = [n for n in encrypt_layers if n not in tensor_names]
    if unknown or not encrypt_layers:
        raise UsageError(option, ",".join(unknown), f"expected names of tensors of the MMAR's network{example}")


def check_he_layers_for_mmar(
    mmar: str | os.PathLike,
    encrypt_layers: list[str] | str | None,
    overrides: Mapping[str, Any] | None = None,
    option: str = HE_LAYERS_OPTION,
) -> None:
    """:func:`check_he_layers` against the MMAR's network, built here (torch; restricted code policy) only when a
    selection is given.

    Args:
        mmar: the MMAR root folder.
        encrypt_layers: a list of tensor names, a regular expression, or None (all: nothing is built).
        overrides: values on top of the MMAR's environment.json.
        option: the option or argument that gave the selection, for the error.

    Raises:
        ConfigError: the network does not build.
        UsageError: the selection matches no tensor.
    """
    if encrypt_layers is None:
        return
    from clara_fl.fl.jobs.privacy_check import SiteUpdate

    names = list(SiteUpdate.of_mmar(str(mmar), overrides=overrides).tensors)
    check_he_layers(encrypt_layers, names, option)
