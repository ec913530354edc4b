"""A Clara MMAR's own FL configs (Clara 4.0/4.1 and NVFlare 2.0 formats) carried into clara-fl's FLARE 2.9 jobs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from clara_fl.config.errors import ConfigError
from clara_fl.fl.jobs.privacy import PRIVACY_FILTERS
from tests.conftest import REFERENCE, SPLEEN_MMAR

CLARA_FL = REFERENCE / "FL"
BRATS18 = REFERENCE.parent / "nvflare-2.0.5-brats18" / "brats18_fedavg" / "config"
needs_reference = pytest.mark.skipif(not CLARA_FL.is_dir() or not BRATS18.is_dir(), reason="reference configs not here")


def mmar_with(tmp_path: Path, server: Path | dict[str, Any] | None, client: Path | dict[str, Any] | None) -> Path:
    mmar = tmp_path / "mmar"
    shutil.copytree(SPLEEN_MMAR, mmar)
    for name, source in (("config_fed_server.json", server), ("config_fed_client.json", client)):
        if isinstance(source, Path):
            shutil.copy(source, mmar / "config" / name)
        elif source is not None:
            (mmar / "config" / name).write_text(json.dumps(source))
    return mmar


# Clara 4.0's documented HE example (clara-train-examples, NoteBooks/FL/adminMMAR_HE and its notebook): Clara's HE
# components by their nvflare.experimental / medl paths, the sites encrypting three layers
CLARA_HE = "nvflare.experimental.homomorphic_encryption"
ENCRYPTED_LAYERS = [
    "model.0.conv.unit0.conv.weight",
    "model.1.submodule.1.submodule.1.submodule.2.0.conv.weight",
    "model.2.1.conv.unit0.conv.weight",
]
CLARA_40_HE_SERVER: dict[str, Any] = {
    "format_version": 1,
    "servers": [
        {
            "name": "spleen_segmentation",
            "min_num_clients": 2,
            "max_num_clients": 100,
            "wait_after_min_clients": 10,
            "heart_beat_timeout": 600,
            "start_round": 0,
            "num_rounds": 2,
        }
    ],
    "aggregator": {
        "path": f"{CLARA_HE}.he_intime_accumulate_model_aggregator.HEInTimeAccumulateWeightedAggregator",
        "args": {"aggregation_weights": {"client0": 0.2, "client1": 0.5, "client2": 0.3}},
    },
    "outbound_filters": [],
    "inbound_filters": [],
    "model_persistor": {
        "path": f"{CLARA_HE}.he_pt_file_model_persistor.HEPTFileModelPersistor",
        "args": {
            "exclude_vars": "dummy",
            "model": {"path": "monai.networks.nets.unet.UNet", "args": {"dimensions": 3, "in_channels": 1}},
        },
    },
    "shareable_generator": {"path": f"{CLARA_HE}.he_model_shareable_generator.HEModelShareableGenerator"},
    "handlers": [{"name": "IntimeModelSelectionHandler", "args": {}}],
}
CLARA_40_HE_CLIENT: dict[str, Any] = {
    "format_version": 1,
    "servers": [{"name": "spleen_segmentation"}],
    "client": {
        "outbound_filters": [
            {
                "path": f"{CLARA_HE}.he_model_encryptor.HEModelEncryptor",
                "args": {"encrypt_layers": ENCRYPTED_LAYERS, "aggregation_weights": {"client1": 1.0, "client2": 1.0}},
            }
        ],
        "inbound_filters": [{"path": f"{CLARA_HE}.he_model_decryptor.HEModelDecryptor"}],
    },
    "client_trainer": {
        "path": "medl.apps.fed_learn.trainers.client_trainer.ClientTrainer",
        "args": {
            "local_epochs": 2,
            "steps_aggregation": 0,
            "model_reader_writer": {"path": f"{CLARA_HE}.he_pt_model_reader_writer.HEPTModelReaderWriter"},
        },
    },
    "handlers": [],
    "cross_validate": True,
    "cross_site_validation": {
        "is_participating": True,
        "model_validator": {"path": "medl.apps.fed_learn.validators.client_validator.ClientValidator", "args": {}},
        "inbound_filters": [{"path": "medl.apps.fed_learn.filters.he_eval_decryptor.HEEvalDecryptor", "args": {}}],
        "outbound_filters": [],
    },
}
# Clara 4.0's documented config_fed_server.json (federated_learning_configuration_details, 4.0 and 4.1)
CLARA_40_SERVER: dict[str, Any] = {
    "format_version": 1,
    "servers": [{"min_num_clients": 1, "max_num_clients": 100, "wait_after_min_clients": 30, "num_rounds": 200}],
    "aggregator": {
        "name": "AccumulateWeightedAggregator",
        "args": {"exclude_vars": "dummy", "aggregation_weights": {"client0": 1, "client1": 1.5, "client2": 0.8}},
    },
    "outbound_filters": [],
    "inbound_filters": [],
    "model_persistor": {
        "name": "PTFileModelPersistor",
        "args": {"exclude_vars": "dummy", "model": {"path": "monai.networks.nets.unet.UNet", "args": {}}},
    },
    "shareable_generator": {"name": "FullModelShareableGenerator"},
}
FLARE_HE = "nvflare.app_opt.he"


def app_config(job: Path, side: str) -> dict[str, Any]:
    return json.loads((job / "app" / "config" / f"config_fed_{side}.json").read_text())


def by_id(config: dict[str, Any], component_id: str) -> dict[str, Any]:
    return next(c for key in ("workflows", "components") for c in config.get(key, []) if c["id"] == component_id)


@needs_reference
def test_clara_4_server_and_client_configs_become_recipe_settings(tmp_path: Path) -> None:
    from clara_fl.recipes.clara_configs import read_fl_configs

    mmar = mmar_with(
        tmp_path,
        CLARA_FL / "adminMMAR/config/config_fed_server.json",
        CLARA_FL / "adminMMAR/config/config_fed_client.json",
    )

    imported = read_fl_configs(mmar)

    s = imported.settings
    assert (s.num_rounds, s.min_clients, s.start_round) == (2, 2, 0)
    assert (s.wait_after_min_clients, s.heart_beat_timeout) == (10, 600)
    assert s.aggregation_weights == {"client0": 1, "client1": 1.5, "client2": 0.8}
    assert (s.persistor_exclude_vars, s.local_epochs, s.steps_aggregation, s.cross_site_eval) == ("dummy", 2, 0, True)
    ignored = "\n".join(imported.ignored)
    assert "servers[0].max_num_clients" in ignored and "client_trainer.args.model_reader_writer" in ignored


@needs_reference
def test_job_from_an_mmar_with_clara_fl_configs_matches_them_with_command_line_values_on_top(tmp_path: Path) -> None:
    from clara_fl.recipes.job_folder import create_job

    mmar = mmar_with(
        tmp_path,
        CLARA_FL / "adminMMAR/config/config_fed_server.json",
        CLARA_FL / "adminMMAR_privacy/config/config_fed_client_w_PercentileProtocol.json",
    )

    job = create_job(mmar, tmp_path / "job", num_rounds=5)

    server, client = app_config(job, "server"), app_config(job, "client")
    assert by_id(server, "scatter_and_gather")["args"]["num_rounds"] == 5, "the command line wins"
    assert by_id(server, "scatter_and_gather")["args"]["min_clients"] == 2
    assert by_id(server, "scatter_and_gather")["args"]["wait_time_after_min_received"] == 10
    assert by_id(server, "aggregator")["args"]["aggregation_weights"] == {"client0": 1, "client1": 1.5, "client2": 0.8}
    assert by_id(client, "clara_learner")["args"]["local_epochs"] == 2
    [privacy] = [f for group in client["task_result_filters"] for f in group["filters"]]
    assert privacy["path"] == PRIVACY_FILTERS["PercentilePrivacy"]
    assert (privacy["args"]["percentile"], privacy["args"]["gamma"]) == (75, 50)


@needs_reference
def test_nvflare_2_0_configs_of_the_clara_4_1_era_are_read(tmp_path: Path) -> None:
    from clara_fl.recipes.clara_configs import read_fl_configs

    mmar = mmar_with(tmp_path, BRATS18 / "config_fed_server.json", BRATS18 / "config_fed_client.json")

    s = read_fl_configs(mmar).settings

    assert (s.num_rounds, s.min_clients, s.wait_after_min_clients, s.local_epochs) == (600, 13, 10, 1)
    assert s.aggregation_weights == {"site-1": 1.0, "site-2": 1.0} and s.cross_site_eval is True


def test_an_mmar_without_fl_configs_gives_none(tmp_path: Path) -> None:
    from clara_fl.recipes.clara_configs import read_fl_configs

    assert read_fl_configs(mmar_with(tmp_path, None, None)) is None


@pytest.mark.parametrize(
    ("server", "client", "path", "message"),
    [
        ({"aggregator": {"path": "my_aggregators.MedianAggregator", "args": {}}}, None, "aggregator", "port it"),
        (
            None,
            {"client": {"outbound_filters": [{"name": "GaussianNoise"}]}},
            "client.outbound_filters[0]",
            "not carried",
        ),
        (
            None,
            {"client": {"outbound_filters": [{"name": "PercentilePrivacy", "args": {"percent": 5}}]}},
            "client.outbound_filters[0].args.percent",
            "not an argument",
        ),
        ({"servers": [{"num_rounds": "ten"}]}, None, "servers[0].num_rounds", "whole number"),
        (
            None,
            {"cross_site_validation": {"is_participating": False}},
            "cross_site_validation.is_participating",
            "sits out",
        ),
        (
            None,
            {"client": {"outbound_filters": [{"name": "HEModelEncryptor"}, {"name": "PercentilePrivacy"}]}},
            "client.outbound_filters[1]",
            "would get encrypted weights",
        ),
        (
            {"aggregator": {"name": "HEInTimeAccumulateWeightedAggregator", "args": {"weigh_by_local_iter": True}}},
            None,
            "aggregator.args.weigh_by_local_iter",
            "both the sites and the server weigh",
        ),
        (
            None,
            {"client": {"outbound_filters": [{"name": "HEModelEncryptor", "args": {"weigh_by_local_iter": False}}]}},
            "client.outbound_filters[0].args.weigh_by_local_iter",
            "neither the sites nor the server weighs",
        ),
    ],
)
def test_a_setting_that_cannot_be_carried_is_a_one_line_error_naming_file_and_path(
    tmp_path: Path, server: dict | None, client: dict | None, path: str, message: str
) -> None:
    from clara_fl.recipes.job_folder import create_job

    mmar = mmar_with(tmp_path, server, client)

    with pytest.raises(ConfigError) as error:
        create_job(mmar, tmp_path / "job")

    assert error.value.path == path and message in error.value.message
    assert error.value.file.endswith("config_fed_server.json" if server else "config_fed_client.json")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "job").exists(), "nothing is written before the inputs are checked"


@needs_reference
def test_settings_the_chosen_template_cannot_take_are_an_error_not_dropped(tmp_path: Path) -> None:
    from clara_fl.recipes.job_folder import create_job

    mmar = mmar_with(tmp_path, CLARA_FL / "adminMMAR/config/config_fed_server.json", None)

    with pytest.raises(ConfigError, match="no component that takes"):
        create_job(mmar, tmp_path / "job", "clara_fedavg_cse_mc")


def test_clara_40_he_configs_become_an_he_job_on_flares_he_components_with_their_arguments(tmp_path: Path) -> None:
    """FLARE's HE pieces, through clara-fl's subclasses that pack the tensors (clara_fl.fl.site.he_filters,
    clara_fl.fl.server.he)."""
    from clara_fl.recipes.job_folder import create_job

    mmar = mmar_with(tmp_path, CLARA_40_HE_SERVER, CLARA_40_HE_CLIENT)

    job = create_job(mmar, tmp_path / "job")

    server, client = app_config(job, "server"), app_config(job, "client")
    assert by_id(server, "aggregator")["path"] == "clara_fl.fl.server.he.HEInTimeAccumulateWeightedAggregator"
    assert by_id(server, "shareable_generator")["path"] == "clara_fl.fl.server.he.HEModelShareableGenerator"
    persistor = by_id(server, "persistor")["args"]
    assert persistor["exclude_vars"] == "dummy", "the persistor's exclude_vars reaches FLARE's PTFileModelPersistor"
    assert by_id(server, persistor["filter_id"])["path"] == f"{FLARE_HE}.model_serialize_filter.HEModelSerializeFilter"
    [encryptor] = [f for g in client["task_result_filters"] if g["tasks"] == ["train"] for f in g["filters"]]
    assert encryptor["path"] == "clara_fl.fl.site.he_filters.HEModelEncryptor"
    assert encryptor["args"]["encrypt_layers"] == ENCRYPTED_LAYERS
    decrypted = {
        t for g in client["task_data_filters"] for t in g["tasks"] if g["filters"][-1]["path"].endswith("Decryptor")
    }
    assert decrypted == {"train", "validate_global_model", "validate"}, "HEEvalDecryptor's cross-site models included"
    assert by_id(client, "clara_learner")["args"]["local_epochs"] == 2


def test_under_he_the_encryptors_weights_count_at_both_ends_and_the_aggregators_are_listed_as_ignored(
    tmp_path: Path,
) -> None:
    from clara_fl.recipes.clara_configs import read_fl_configs
    from clara_fl.recipes.job_folder import create_job

    mmar = mmar_with(tmp_path, CLARA_40_HE_SERVER, CLARA_40_HE_CLIENT)

    job = create_job(mmar, tmp_path / "job")

    server, client = app_config(job, "server"), app_config(job, "client")
    sites = {"client1": 1.0, "client2": 1.0}
    aggregator = by_id(server, "aggregator")["args"]
    assert aggregator["aggregation_weights"] == sites and "weigh_by_local_iter" not in aggregator, "it only adds"
    [encryptor] = [f for g in client["task_result_filters"] if g["tasks"] == ["train"] for f in g["filters"]]
    assert (encryptor["args"]["aggregation_weights"], encryptor["args"]["weigh_by_local_iter"]) == (sites, True)
    ignored = "\n".join(read_fl_configs(mmar).ignored)
    assert "config/config_fed_server.json: aggregator.args.aggregation_weights (HEInTime" in ignored


def test_an_he_server_that_weighs_gives_the_aggregators_weights_to_the_sites_which_weigh(tmp_path: Path) -> None:
    from clara_fl.recipes.job_folder import create_job

    server_weighs = json.loads(json.dumps(CLARA_40_HE_SERVER))
    server_weighs["aggregator"]["args"]["weigh_by_local_iter"] = True
    sites_encrypt = json.loads(json.dumps(CLARA_40_HE_CLIENT))
    encryptor_args = sites_encrypt["client"]["outbound_filters"][0]["args"]
    del encryptor_args["aggregation_weights"]
    encryptor_args["weigh_by_local_iter"] = False
    mmar = mmar_with(tmp_path, server_weighs, sites_encrypt)

    job = create_job(mmar, tmp_path / "job")

    server, client = app_config(job, "server"), app_config(job, "client")
    aggregator = by_id(server, "aggregator")["args"]
    weights = {"client0": 0.2, "client1": 0.5, "client2": 0.3}
    assert aggregator["aggregation_weights"] == weights and "weigh_by_local_iter" not in aggregator
    [encryptor] = [f for g in client["task_result_filters"] if g["tasks"] == ["train"] for f in g["filters"]]
    # the server only adds ciphertexts (no level left to multiply in): the same weights apply at the sites
    assert encryptor["args"]["weigh_by_local_iter"] is True and encryptor["args"]["aggregation_weights"] == weights


def test_clara_40_accumulate_weighted_aggregator_becomes_flares_in_time_aggregator_with_its_arguments(
    tmp_path: Path,
) -> None:
    from clara_fl.recipes.job_folder import create_job

    mmar = mmar_with(tmp_path, CLARA_40_SERVER, None)

    job = create_job(mmar, tmp_path / "job")

    server = app_config(job, "server")
    aggregator = by_id(server, "aggregator")
    assert aggregator["path"].endswith(".InTimeAccumulateWeightedAggregator")
    assert aggregator["args"]["aggregation_weights"] == {"client0": 1, "client1": 1.5, "client2": 0.8}
    assert aggregator["args"]["exclude_vars"] == "dummy"
    assert by_id(server, "persistor")["args"]["exclude_vars"] == "dummy"
    assert by_id(server, "scatter_and_gather")["args"]["num_rounds"] == 200


def test_the_recipe_exports_the_arguments_of_clara_40_he_configs_as_job_create_writes_them(tmp_path: Path) -> None:
    pytest.importorskip("tenseal")
    from clara_fl.recipes import ClaraFedAvgRecipe

    mmar = mmar_with(tmp_path, CLARA_40_HE_SERVER, CLARA_40_HE_CLIENT)

    ClaraFedAvgRecipe(mmar, name="job").export(str(tmp_path / "export"))

    server, client = (
        app_config(tmp_path / "export" / "job", "server"),
        app_config(tmp_path / "export" / "job", "client"),
    )
    assert by_id(server, "persistor")["args"]["exclude_vars"] == "dummy"
    assert by_id(server, "aggregator")["args"]["aggregation_weights"] == {"client1": 1.0, "client2": 1.0}
    [encryptor] = [f for g in client["task_result_filters"] if g["tasks"] == ["train"] for f in g["filters"]]
    assert encryptor["args"]["encrypt_layers"] == ENCRYPTED_LAYERS
    assert encryptor["args"]["aggregation_weights"] == {"client1": 1.0, "client2": 1.0}
