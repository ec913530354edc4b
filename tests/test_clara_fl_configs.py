"""A Clara MMAR's own FL configs (Clara 4.0/4.1 and NVFlare 2.0 formats) carried into clara-fl's FLARE 2.9 jobs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from clara_fl.config.errors import ConfigError
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
    assert (s.exclude_vars, s.local_epochs, s.steps_aggregation, s.cross_site_eval) == ("dummy", 2, 0, True)
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
    assert privacy["path"] == "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy"
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
