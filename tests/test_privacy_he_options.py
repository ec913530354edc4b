"""``clara-fl job create --privacy SPEC --he`` and the recipe's equivalents: checked options, edited app configs."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clara_fl.cli import main
from clara_fl.config.errors import ConfigError
from clara_fl.fl.jobs.privacy import (
    FLARE_PRIVACY_FILTERS,
    PRIVACY_FILTER_PARAMETERS,
    PRIVACY_FILTERS,
    parse_privacy_option,
)
from clara_fl.recipes.app_configs import FedAvgSettings, build_job
from tests.conftest import REPO, SPLEEN_MMAR

PERCENTILE = "PercentilePrivacy:percentile=10,gamma=0.01"
ENCRYPTOR = "nvflare.app_opt.he.model_encryptor.HEModelEncryptor"
DECRYPTOR = "nvflare.app_opt.he.model_decryptor.HEModelDecryptor"


def chains(config: dict[str, Any], key: str) -> dict[str, list[str]]:
    """Each task's filter chain under ``key`` as class names; a task in two chains fails (FLARE refuses it)."""
    found: dict[str, list[str]] = {}
    for group in config.get(key, []):
        for task in group["tasks"]:
            assert task not in found, f"{task} has two {key} chains"
            found[task] = [f["path"].rpartition(".")[2] for f in group["filters"]]
    return found


def hide_tenseal(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if TenSEAL were not installed (the check looks it up without importing it)."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tenseal" else real_find_spec(name, *a)
    )


def by_id(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for key in ("components", "workflows") for c in config.get(key, [])}


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", sorted(PRIVACY_FILTERS))
def test_the_privacy_parameter_table_matches_flares_own_signatures(name: str) -> None:
    signature = inspect.signature(_class(FLARE_PRIVACY_FILTERS[name]))

    assert list(PRIVACY_FILTER_PARAMETERS[name]) == list(signature.parameters)


@pytest.mark.parametrize("name", sorted(PRIVACY_FILTERS))
def test_a_job_names_a_subclass_of_flares_filter_that_takes_the_same_arguments(name: str) -> None:
    counting, flare = _class(PRIVACY_FILTERS[name]), _class(FLARE_PRIVACY_FILTERS[name])

    assert issubclass(counting, flare) and counting.__name__ == flare.__name__
    assert inspect.signature(counting) == inspect.signature(flare)


def test_checking_privacy_options_imports_neither_nvflare_nor_torch() -> None:
    code = (
        "import sys; from clara_fl.fl.jobs.privacy import parse_privacy_option; "
        f"parse_privacy_option({PERCENTILE!r}); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'nvflare', 'torch'}))"
    )

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout

    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("GaussianNoise:sigma=1", "ExcludeVars"),
        ("PercentilePrivacy:sigma=1", "percentile, gamma, data_kinds"),
        ("SVTPrivacy:replace=3", "true or false"),
        ("PercentilePrivacy:gamma=high", "a number"),
    ],
    ids=["unknown_filter", "unknown_argument", "bool_argument", "number_argument"],
)
def test_a_bad_privacy_option_is_a_one_line_error_listing_what_is_valid_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, spec: str, expected: str
) -> None:
    code = main(["job", "create", "-m", str(SPLEEN_MMAR), "-o", str(tmp_path / "job"), "--privacy", spec])

    err = capsys.readouterr().err.strip()
    assert code == 2 and "--privacy" in err and expected in err and "\n" not in err
    assert not (tmp_path / "job").exists()


def test_job_create_puts_every_privacy_filter_on_the_train_result_in_order(tmp_path: Path) -> None:
    exclude = "ExcludeVars:exclude_vars=model\\.2\\."

    code = main(
        [
            "job",
            "create",
            "-m",
            str(SPLEEN_MMAR),
            "-o",
            str(tmp_path / "job"),
            "--privacy",
            PERCENTILE,
            "--privacy",
            exclude,
        ]
    )

    client = json.loads((tmp_path / "job" / "app" / "config" / "config_fed_client.json").read_text())
    [group] = client["task_result_filters"]
    assert code == 0 and group["tasks"] == ["train"]
    percentile, excluded = group["filters"]
    assert percentile["path"] == PRIVACY_FILTERS["PercentilePrivacy"]
    assert (percentile["args"]["percentile"], percentile["args"]["gamma"]) == (10, 0.01)
    assert excluded["path"] == PRIVACY_FILTERS["ExcludeVars"] and excluded["args"]["exclude_vars"] == "model\\.2\\."


def test_he_switches_the_server_to_flares_he_components_and_keeps_its_other_settings() -> None:
    settings = FedAvgSettings(he=True, aggregation_weights={"site-1": 2.0})

    configs = build_job(SPLEEN_MMAR, settings)

    server = by_id(configs.server.to_config())
    assert server["aggregator"]["path"].endswith("HEInTimeAccumulateWeightedAggregator")
    assert server["aggregator"]["args"]["aggregation_weights"] == {"site-1": 2.0}
    assert "weigh_by_local_iter" not in server["aggregator"]["args"], "the sites weigh before encrypting"
    assert server["aggregator"]["args"]["expected_data_kind"] == "WEIGHTS", "the sites send their weighted weights"
    assert server["shareable_generator"]["path"].endswith("HEModelShareableGenerator")
    serialize_filter = server["persistor"]["args"]["filter_id"]
    assert server[serialize_filter]["path"].endswith("HEModelSerializeFilter")
    assert server["cross_site_model_eval"]["path"] == "clara_fl.fl.server.he.HECrossSiteModelEval"


def test_he_decrypts_every_model_a_site_receives_and_encrypts_what_it_sends_after_the_privacy_filters() -> None:
    settings = FedAvgSettings(he=True, result_filters=[parse_privacy_option(PERCENTILE)])

    client = build_job(SPLEEN_MMAR, settings).client.to_config()

    assert chains(client, "task_data_filters") == {
        task: ["HEModelDecryptor"] for task in ("train", "validate_global_model", "validate")
    }
    results = chains(client, "task_result_filters")
    assert results == {"train": ["PercentilePrivacy", "HEModelEncryptor"], "submit_model": ["HEModelEncryptor"]}
    [train] = [g for g in client["task_result_filters"] if g["tasks"] == ["train"]]
    assert train["filters"][1]["args"]["weigh_by_local_iter"] is True


def test_under_he_the_sites_multiply_by_the_aggregation_weights_the_server_sums() -> None:
    weights = {"site-1": 2.0, "site-2": 1.0}

    configs = build_job(SPLEEN_MMAR, FedAvgSettings(he=True, aggregation_weights=weights))

    [train] = [g["filters"][-1] for g in configs.client.to_config()["task_result_filters"] if g["tasks"] == ["train"]]
    [submitted] = [
        g["filters"][-1] for g in configs.client.to_config()["task_result_filters"] if g["tasks"] == ["submit_model"]
    ]
    assert (
        train["args"]["aggregation_weights"]
        == by_id(configs.server.to_config())["aggregator"]["args"]["aggregation_weights"]
    )
    assert "aggregation_weights" not in submitted["args"], "a site's best model is sent as it is"


def test_he_on_the_model_controller_template_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="--he needs a ScatterAndGather template"):
        build_job(SPLEEN_MMAR, FedAvgSettings(he=True), "clara_fedavg_cse_mc")


def test_an_he_job_without_tenseal_is_a_one_line_error_with_the_install_hint_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_tenseal(monkeypatch)

    code = main(["job", "create", "-m", str(SPLEEN_MMAR), "-o", str(tmp_path / "job"), "--he"])

    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install clara-fl[he]" in err and "\n" not in err
    assert not (tmp_path / "job").exists()


def test_simulating_an_he_job_without_tenseal_is_the_same_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tenseal")
    assert main(["job", "create", "-m", str(SPLEEN_MMAR), "-o", str(tmp_path / "job"), "--he"]) == 0
    hide_tenseal(monkeypatch)
    capsys.readouterr()

    code = main(["simulate", str(tmp_path / "job"), "-w", str(tmp_path / "ws")])

    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install clara-fl[he]" in err and "\n" not in err


def test_the_simulator_workspace_gets_the_servers_public_context_and_the_sites_secret_one(tmp_path: Path) -> None:
    ts = pytest.importorskip("tenseal")
    from clara_fl.fl.jobs.he_context import CLIENT_CONTEXT, SERVER_CONTEXT, write_simulator_he_contexts

    startup = Path(write_simulator_he_contexts(tmp_path / "ws"))

    assert startup == tmp_path / "ws" / "startup"
    server = ts.context_from((startup / SERVER_CONTEXT).read_bytes())
    client = ts.context_from((startup / CLIENT_CONTEXT).read_bytes())
    assert not server.is_private() and client.is_private()
    encrypted = ts.ckks_vector(client, [1.0, 2.0])
    assert np.allclose(ts.ckks_vector_from(client, encrypted.serialize()).decrypt(), [1.0, 2.0], atol=1e-3)


def test_a_job_uses_he_when_its_app_configs_name_flares_he_components(tmp_path: Path) -> None:
    pytest.importorskip("tenseal")
    from clara_fl.fl.jobs.he_context import job_uses_he

    main(["job", "create", "-m", str(SPLEEN_MMAR), "-o", str(tmp_path / "he"), "--he"])
    main(["job", "create", "-m", str(SPLEEN_MMAR), "-o", str(tmp_path / "plain"), "--privacy", PERCENTILE])

    assert job_uses_he(tmp_path / "he") and not job_uses_he(tmp_path / "plain")


def test_decrypted_flat_weights_take_the_networks_shapes_and_dtypes() -> None:
    from clara_fl.fl.site.weights import shaped_like

    reference: dict[str, np.ndarray] = {"w": np.zeros((2, 3), dtype=np.float32), "steps": np.array(0, dtype=np.int64)}

    shaped = shaped_like({"w": [0.5] * 6, "steps": [2.9999], "extra": [1.0]}, reference)

    assert shaped["w"].shape == (2, 3) and shaped["w"].dtype == np.float32
    assert shaped["steps"].dtype == np.int64 and shaped["steps"].tolist() == 3
    assert shaped["extra"] == [1.0], "keys the network does not have stay as they came"


def test_the_recipe_provisions_he_contexts_for_a_sim_env_and_refuses_a_poc_env_without_them(tmp_path: Path) -> None:
    pytest.importorskip("tenseal")
    from nvflare.recipe.poc_env import PocEnv
    from nvflare.recipe.sim_env import SimEnv

    from clara_fl.recipes.fedavg import ClaraFedAvgRecipe

    recipe = ClaraFedAvgRecipe(SPLEEN_MMAR, name="he_job", he=True)
    recipe.process_env(SimEnv(num_clients=2, workspace_root=str(tmp_path)))

    startup = tmp_path / "he_job" / "startup"
    assert (startup / "server_context.tenseal").is_file() and (startup / "client_context.tenseal").is_file()
    with pytest.raises(ConfigError, match="use_he=True"):
        recipe.process_env(PocEnv(num_clients=2))


def test_filters_for_a_task_that_shares_a_chain_get_a_chain_of_its_own_that_keeps_the_shared_filters() -> None:
    from clara_fl.recipes.job_model import ClientApp, Component

    shared = {"path": "a.Shared", "args": {}}
    client = ClientApp.from_config({"task_result_filters": [{"tasks": ["train", "submit_model"], "filters": [shared]}]})

    client.add_task_filters("task_result_filters", ["train"], [Component("b.Added")])

    assert chains(client.to_config(), "task_result_filters") == {
        "submit_model": ["Shared"],
        "train": ["Shared", "Added"],
    }


def test_he_layers_become_the_encryptors_encrypt_layers_for_training_and_the_submitted_model(tmp_path: Path) -> None:
    pytest.importorskip("tenseal")

    code = main(
        [
            "job",
            "create",
            "-m",
            str(SPLEEN_MMAR),
            "-o",
            str(tmp_path / "job"),
            "--he",
            "--he-layers",
            "^model\\.0\\.,^model\\.2\\.",
        ]
    )

    client = json.loads((tmp_path / "job" / "app" / "config" / "config_fed_client.json").read_text())
    encryptors = [
        f for g in client["task_result_filters"] for f in g["filters"] if f["path"].endswith("HEModelEncryptor")
    ]
    assert code == 0 and len(encryptors) == 2
    assert {e["args"]["encrypt_layers"] for e in encryptors} == {"(?:^model\\.0\\.)|(?:^model\\.2\\.)"}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--he", "--he-layers", "^decoder\\."], "matches none of the"),
        (["--he", "--he-layers", "model["], "not a regular expression"),
        (["--he-layers", "model"], "only applies with --he"),
    ],
    ids=["matches_nothing", "bad_regex", "without_he"],
)
def test_a_bad_he_layers_option_is_a_one_line_error_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, options: list[str], expected: str
) -> None:
    pytest.importorskip("tenseal")

    code = main(["job", "create", "-m", str(SPLEEN_MMAR), "-o", str(tmp_path / "job"), *options])

    err = capsys.readouterr().err.strip()
    assert code == 2 and "--he-layers" in err and expected in err and "\n" not in err
    assert not (tmp_path / "job").exists()


def test_the_recipe_refuses_he_layers_that_match_no_tensor() -> None:
    pytest.importorskip("tenseal")
    from clara_fl.config.errors import UsageError
    from clara_fl.recipes.fedavg import ClaraFedAvgRecipe

    with pytest.raises(UsageError, match="he_layers"):
        ClaraFedAvgRecipe(SPLEEN_MMAR, he=True, he_layers=["model.no_such.weight"])
