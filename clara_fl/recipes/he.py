"""Homomorphic encryption (``--he``) as changes to a job's apps (:mod:`clara_fl.recipes.job_model`): FLARE 2.9's HE
components.

The sites encrypt what they send with TenSEAL's CKKS scheme (``HEModelEncryptor``) and decrypt what they get
(``HEModelDecryptor``); the server adds encrypted updates (``HEInTimeAccumulateWeightedAggregator``), applies
them to the global model in encrypted space (``HEModelShareableGenerator``), stores that model through
``HEModelSerializeFilter`` and runs cross-site evaluation on encrypted models (FLARE's ``HECrossSiteModelEval``,
through :mod:`clara_fl.fl.server.he`).
The server never holds the secret key: ``server_context.tenseal`` in its startup folder has none, the sites'
``client_context.tenseal`` has it (see :mod:`clara_fl.fl.jobs.he_context`).

Plain data only (no nvflare, no tenseal): ``clara-fl job create --he`` writes a job without the HE stack.
"""

from __future__ import annotations

from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.recipes.job_model import ClientApp, Component, ServerApp

__all__ = ["HE_TEMPLATE_WORKFLOW", "apply_homomorphic_encryption"]

_HE = "nvflare.app_opt.he"
ENCRYPTOR = f"{_HE}.model_encryptor.HEModelEncryptor"
DECRYPTOR = f"{_HE}.model_decryptor.HEModelDecryptor"
AGGREGATOR = f"{_HE}.intime_accumulate_model_aggregator.HEInTimeAccumulateWeightedAggregator"
SHAREABLE_GENERATOR = f"{_HE}.model_shareable_generator.HEModelShareableGenerator"
SERIALIZE_FILTER = f"{_HE}.model_serialize_filter.HEModelSerializeFilter"
# FLARE's HECrossSiteModelEval, made able to send encrypted models (see clara_fl.fl.server.he)
CROSS_SITE_MODEL_EVAL = "clara_fl.fl.server.he.HECrossSiteModelEval"
SERIALIZE_FILTER_ID = "he_serialize_filter"
HE_TEMPLATE_WORKFLOW = "scatter_and_gather"
# what the sites decrypt: every task that carries the (encrypted) global model or a server-held model
DECRYPTED_TASKS = ("train", "validate_global_model", "validate")


def apply_homomorphic_encryption(
    server: ServerApp,
    client: ClientApp,
    template: str,
    encrypt_layers: list[str] | str | None = None,
    weigh_at_server: bool = False,
) -> None:
    """Switch a ScatterAndGather job's apps (clara_fedavg_cse and its kind) to FLARE's HE components.

    The updates are weighed by each site's steps and aggregation weight exactly once: by default at the sites
    before encrypting (HEModelEncryptor), with ``weigh_at_server`` by the server in encrypted space
    (HEInTimeAccumulateWeightedAggregator). The aggregator divides by the same weights either way.

    Args:
        server: the job's server app, changed in place.
        client: the job's client app, changed in place.
        template: the template's name, for the error.
        encrypt_layers: HEModelEncryptor's ``encrypt_layers`` (names or a regular expression); None encrypts all.
        weigh_at_server: the server weighs the encrypted updates instead of the sites.

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
    aggregator_args = dict(aggregator.args)
    aggregator.path = AGGREGATOR
    aggregator.args = {**aggregator_args, "weigh_by_local_iter": weigh_at_server}
    encryptor_args: dict[str, Any] = {"weigh_by_local_iter": not weigh_at_server}
    if encrypt_layers is not None:
        encryptor_args["encrypt_layers"] = encrypt_layers
    if not weigh_at_server and aggregator_args.get("aggregation_weights"):
        # the aggregator divides by these weights; the sites must have multiplied by them
        encryptor_args["aggregation_weights"] = aggregator_args["aggregation_weights"]
    generator.path = SHAREABLE_GENERATOR
    generator.args = {}
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
