"""``clara-fl evaluate``: the --model option, the weights-only load, the check against the MMAR's network, and
the evaluation job it writes, the recipe, and a site's own model (the simulation is in test_fed_evaluate_e2e.py,
the POC run in test_poc_evaluate.py)."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path
from typing import Any

import pytest
import torch
from nvflare.apis.shareable import ReservedHeaderKey, Shareable

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.fl.jobs.model_check import (
    GivenModel,
    check_against_network,
    load_given_model,
    parse_model_options,
)
from tests.conftest import SPLEEN_MMAR


class _WritesAFileWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (self.marker,))


def component_classes(config: dict) -> set[tuple[str | None, str]]:
    """An app config's workflows and components by id and class name."""
    return {(e.get("id"), e["path"].rpartition(".")[2]) for k in ("workflows", "components") for e in config.get(k, [])}


def small_network() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


@pytest.fixture(scope="module")
def spleen_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The spleen MMAR's network, untrained, saved as a Clara checkpoint (``{"model": state_dict, ...}``)."""
    from clara_fl.workflows.network import build_train_network

    path = tmp_path_factory.mktemp("models") / "untrained.pt"
    torch.save({"model": build_train_network(str(SPLEEN_MMAR)).state_dict(), "epoch": 0}, path)
    return path


# -- the --model option -----------------------------------------------------------------------------------


def test_model_options_give_each_name_its_file_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.pt").touch()
    (tmp_path / "b.pt").touch()

    models = parse_model_options([f"untrained={tmp_path / 'a.pt'}", f"trained_2={tmp_path / 'b.pt'}"])

    assert models == [GivenModel("untrained", tmp_path / "a.pt"), GivenModel("trained_2", tmp_path / "b.pt")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("model.pt", "expected NAME=PATH"),
        ("=model.pt", "the name '' must be a letter"),
        ("../x=model.pt", "the name '../x' must be a letter"),
        ("1st=model.pt", "the name '1st' must be a letter"),
        ("a b=model.pt", "the name 'a b' must be a letter"),
        ("ok=missing.pt", "missing.pt is not a file"),
    ],
)
def test_a_bad_model_option_is_one_line_naming_the_option_and_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").touch()

    with pytest.raises(UsageError) as raised:
        parse_model_options([value])

    message = str(raised.value)
    assert message.startswith("--model ") and expected in message and "\n" not in message


def test_a_name_given_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.pt").touch()

    with pytest.raises(UsageError, match="the name 'same' is given twice"):
        parse_model_options([f"same={tmp_path / 'a.pt'}", f"same={tmp_path / 'a.pt'}"])


def test_no_model_at_all_is_refused() -> None:
    with pytest.raises(UsageError, match="expected at least one model"):
        parse_model_options([])


# -- the weights-only load --------------------------------------------------------------------------------


def test_a_clara_checkpoint_and_a_bare_state_dict_give_the_same_weights(tmp_path: Path) -> None:
    state = small_network().state_dict()
    torch.save({"model": state, "train_conf": {"train": {}}, "epoch": 3}, tmp_path / "clara.pt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")

    clara = load_given_model(GivenModel("clara", tmp_path / "clara.pt"))
    bare = load_given_model(GivenModel("ddp", tmp_path / "ddp.pt"))

    assert set(clara) == set(bare) == set(state)
    assert all(torch.equal(clara[k], state[k]) and torch.equal(bare[k], state[k]) for k in state)


def test_a_pickle_payload_is_refused_in_one_line_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"model": {"w": _WritesAFileWhenUnpickled(marker)}}, tmp_path / "evil.pt")

    with pytest.raises(UsageError) as raised:
        load_given_model(GivenModel("evil", tmp_path / "evil.pt"))

    message = str(raised.value)
    assert message.startswith(f"--model evil={tmp_path / 'evil.pt'}: refusing to load this checkpoint")
    assert "\n" not in message
    assert not marker.exists()


def test_a_file_without_network_weights_is_refused(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "optimizer": {}}, tmp_path / "state.pt")

    with pytest.raises(UsageError, match="checkpoint has no 'model' weights"):
        load_given_model(GivenModel("state", tmp_path / "state.pt"))


# -- the check against the network ------------------------------------------------------------------------


def test_weights_that_fit_the_network_pass_and_are_loaded() -> None:
    weights = small_network().state_dict()
    network = small_network()

    check_against_network({"fits": weights}, {"fits": "fits.pt"}, network)

    assert all(torch.equal(network.state_dict()[k], v) for k, v in weights.items())


def test_a_mismatched_model_is_one_line_naming_it_its_file_and_the_first_mismatched_keys() -> None:
    other = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 2), torch.nn.Linear(2, 2)).state_dict()

    with pytest.raises(UsageError) as raised:
        check_against_network(
            {"good": small_network().state_dict(), "other": other}, {"other": "o.pt"}, small_network()
        )

    message = str(raised.value)
    assert message.startswith("--model other=o.pt: the weights do not fit the MMAR's network")
    assert "unexpected keys 2.weight, 2.bias" in message
    assert "other shapes 0.weight [5, 4] vs [3, 4]" in message
    assert "\n" not in message


def test_the_command_refuses_a_model_of_another_network_before_writing_anything(
    tmp_path: Path, spleen_weights: Path
) -> None:
    from clara_fl.cli import main

    torch.save(small_network().state_dict(), tmp_path / "other.pt")
    job = tmp_path / "job"

    code = main(
        ["evaluate", "-m", str(SPLEEN_MMAR), "--model", f"good={spleen_weights}"]
        + ["--model", f"other={tmp_path / 'other.pt'}", "-o", str(job), "--sites", "site-1,site-2"]
    )

    assert code == 2
    assert not job.exists()


def test_the_command_needs_a_job_folder_or_a_workspace(spleen_weights: Path, capsys: pytest.CaptureFixture) -> None:
    from clara_fl.cli import main

    code = main(["evaluate", "-m", str(SPLEEN_MMAR), "--model", f"m={spleen_weights}"])

    assert code == 2
    assert "-o: expected a job folder to write, or -w WORKSPACE" in capsys.readouterr().err


# -- the job ----------------------------------------------------------------------------------------------


def test_the_job_serves_the_checked_weights_to_cross_site_evaluation_and_trains_nothing(
    tmp_path: Path, spleen_weights: Path
) -> None:
    from clara_fl.recipes.evaluate import create_evaluation_job

    job = create_evaluation_job(
        SPLEEN_MMAR, tmp_path / "job", [GivenModel("untrained", spleen_weights)], overrides={"num_workers": 0}
    )

    server = json.loads((job / "app_server" / "config" / "config_fed_server.json").read_text())
    client = json.loads((job / "app_sites" / "config" / "config_fed_client.json").read_text())
    assert [w["id"] for w in server["workflows"]] == ["cross_site_model_eval"]
    assert server["workflows"][0]["args"]["submit_model_task_name"] == ""
    locator = next(c for c in server["components"] if c["id"] == "model_locator")
    assert locator["args"]["models"] == {"untrained": "evaluated_models/untrained.pt"}
    assert [e["tasks"] for e in client["executors"]] == [["validate"]]
    assert not any("learner" in c["path"].lower() for c in client["components"])
    saved = torch.load(job / "app_server" / "evaluated_models" / "untrained.pt", weights_only=True)
    assert set(saved) == set(load_given_model(GivenModel("untrained", spleen_weights)))
    assert json.loads((job / "app_sites" / "config" / "environment.json").read_text())["num_workers"] == 0
    assert (job / "app_sites" / "config" / "config_cross_validation.json").is_file()


def test_a_job_with_named_sites_gets_a_server_app_and_a_sites_app_and_one_without_a_single_app_for_all() -> None:
    from clara_fl.recipes.job_folder import deploy_map, job_apps, server_app_name
    from clara_fl.recipes.job_model import ClientApp, FLJob, ServerApp

    def job(sites: list[str] | None) -> FLJob:
        return FLJob(ServerApp(), ClientApp(), 1, "fedavg", {}, False, "t", sites=sites)

    named, everyone = job(["a", "b"]), job(None)

    assert deploy_map(named) == {"app_server": ["server"], "app_sites": ["a", "b"]}
    assert job_apps(named) == {"app_server": ("server",), "app_sites": ("client",)}
    assert server_app_name(named) == "app_server"
    assert deploy_map(everyone) == {"app": ["@ALL"]} and job_apps(everyone) == {"app": ("server", "client")}


def test_the_models_go_to_the_server_only_and_the_mmar_to_the_named_sites(tmp_path: Path, spleen_weights: Path) -> None:
    from clara_fl.recipes.evaluate import create_evaluation_job

    job = create_evaluation_job(
        SPLEEN_MMAR, tmp_path / "job", [GivenModel("m", spleen_weights)], sites=["hospital-a", "hospital_b"]
    )

    meta = json.loads((job / "meta.json").read_text())
    assert meta["deploy_map"] == {"app_server": ["server"], "app_sites": ["hospital-a", "hospital_b"]}
    assert meta["min_clients"] == 2
    assert not list((job / "app_sites").rglob("*.pt"))
    assert not (job / "app_sites" / "config" / "config_fed_server.json").exists()
    assert not (job / "app_server" / "config" / "config_fed_client.json").exists()
    assert (job / "app_sites" / "config" / "config_train.json").is_file()


def test_site_models_add_the_submit_model_task_and_each_sites_submitter(tmp_path: Path, spleen_weights: Path) -> None:
    from clara_fl.recipes.evaluate import create_evaluation_job

    job = create_evaluation_job(SPLEEN_MMAR, tmp_path / "job", [GivenModel("m", spleen_weights)], site_models=True)

    server = json.loads((job / "app_server" / "config" / "config_fed_server.json").read_text())
    client = json.loads((job / "app_sites" / "config" / "config_fed_client.json").read_text())
    assert server["workflows"][0]["args"]["submit_model_task_name"] == "submit_model"
    submitter = next(e for e in client["executors"] if e["tasks"] == ["submit_model"])
    assert submitter["executor"]["path"] == "clara_fl.fl.site.own_model.OwnModelSubmitter"


@pytest.mark.parametrize(
    ("sites", "expected"),
    [
        ("", "expected site names joined by commas"),
        ("site-1,server", "'server' is not a site name"),
        ("site-1,@ALL", "'@ALL' is not a site name"),
        ("site 1", "'site 1' is not a site name"),
        ("site-1,site-1", "the site site-1 is given twice"),
    ],
)
def test_a_bad_sites_option_is_one_line_naming_it(sites: str, expected: str) -> None:
    from clara_fl.recipes.evaluate import parse_sites

    with pytest.raises(UsageError) as raised:
        parse_sites(sites)

    assert str(raised.value).startswith("--sites ") and expected in str(raised.value)


def test_min_clients_above_the_named_sites_is_refused_before_writing(tmp_path: Path, spleen_weights: Path) -> None:
    from clara_fl.recipes.evaluate import create_evaluation_job

    with pytest.raises(UsageError, match="more than the 1 site"):
        create_evaluation_job(
            SPLEEN_MMAR, tmp_path / "job", [GivenModel("m", spleen_weights)], min_clients=3, sites=["a"]
        )

    assert not (tmp_path / "job").exists()


def test_the_command_needs_the_sites_for_a_job_folder_and_refuses_them_in_the_simulator(
    tmp_path: Path, spleen_weights: Path, capsys: pytest.CaptureFixture
) -> None:
    from clara_fl.cli import main

    base = ["evaluate", "-m", str(SPLEEN_MMAR), "--model", f"m={spleen_weights}"]

    without = main([*base, "-o", str(tmp_path / "job")])
    without_err = capsys.readouterr().err
    simulated = main([*base, "-w", str(tmp_path / "ws"), "--sites", "a,b"])
    simulated_err = capsys.readouterr().err

    assert without == 2 and "--sites: expected the sites the job goes to" in without_err
    assert simulated == 2 and "--sites a,b: the simulator names its sites site-1..site-N" in simulated_err
    assert not (tmp_path / "job").exists() and not (tmp_path / "ws").exists()


def test_the_server_locates_a_model_as_numpy_weights_and_refuses_a_file_outside_its_app(tmp_path: Path) -> None:
    from nvflare.apis.dxo import DataKind
    from nvflare.apis.fl_constant import FLContextKey
    from nvflare.apis.fl_context import FLContext

    from clara_fl.fl.server.given_models import GivenModelLocator

    app = tmp_path / "app"
    (app / "evaluated_models").mkdir(parents=True)
    state = small_network().state_dict()
    torch.save(state, app / "evaluated_models" / "m.pt")
    torch.save(state, tmp_path / "outside.pt")
    ctx = FLContext()
    ctx.set_prop(FLContextKey.APP_ROOT, str(app), private=True, sticky=False)
    locator = GivenModelLocator({"m": "evaluated_models/m.pt", "escape": "../outside.pt"})
    locator._app_root = str(app)  # as START_RUN sets it (which also loads every model, and ends the job on the escape)

    dxo = locator.locate_model("m", ctx)

    assert dxo.data_kind == DataKind.WEIGHTS and locator.get_model_names(ctx) == ["m", "escape"]
    assert set(dxo.data) == set(state) and all(
        hasattr(v, "dtype") and not torch.is_tensor(v) for v in dxo.data.values()
    )
    with pytest.raises(ConfigError, match="must be a file inside the job's app folder"):
        locator.locate_model("escape", ctx)


@pytest.mark.integration
def test_the_recipe_exports_the_job_the_command_writes(tmp_path: Path, spleen_weights: Path) -> None:
    from clara_fl.recipes import ClaraFedEvalRecipe
    from clara_fl.recipes.evaluate import create_evaluation_job

    written = create_evaluation_job(SPLEEN_MMAR, tmp_path / "job", [GivenModel("untrained", spleen_weights)])
    recipe = ClaraFedEvalRecipe(SPLEEN_MMAR, {"untrained": spleen_weights}, sites=["site-1", "site-2"])
    recipe.export(str(tmp_path / "export"))

    exported = tmp_path / "export" / recipe.name
    meta = json.loads((exported / "meta.json").read_text())
    assert meta["deploy_map"] == {"app_server": ["server"], "app_site-1": ["site-1"], "app_site-2": ["site-2"]}
    # by class: FedJob writes a class's own module, where the job model may name a module that re-exports it
    for side, ours, theirs in (("server", "app_server", "app_server"), ("client", "app_sites", "app_site-1")):
        mine = json.loads((written / ours / "config" / f"config_fed_{side}.json").read_text())
        flares = json.loads((exported / theirs / "config" / f"config_fed_{side}.json").read_text())
        assert component_classes(flares) == component_classes(mine)
    models = exported / "app_server" / "evaluated_models" / "untrained.pt"
    assert set(torch.load(models, weights_only=True)) == set(
        torch.load(written / "app_server" / "evaluated_models" / "untrained.pt", weights_only=True)
    )
    assert not list((exported / "app_site-1").rglob("*.pt"))
    assert (exported / "app_site-1" / "config" / "config_train.json").is_file()


@pytest.mark.integration
def test_the_recipe_takes_its_sites_from_a_sim_env_and_needs_them_named_for_an_export(
    tmp_path: Path, spleen_weights: Path
) -> None:
    from nvflare.recipe.sim_env import SimEnv

    from clara_fl.recipes import ClaraFedEvalRecipe

    unnamed = ClaraFedEvalRecipe(SPLEEN_MMAR, {"m": spleen_weights})
    env = SimEnv(num_clients=3, workspace_root=str(tmp_path / "sim"))

    with pytest.raises(UsageError, match="names its sites"):
        unnamed.export(str(tmp_path / "no_sites"))
    unnamed.process_env(env)

    assert unnamed.fl_job.sites == ["site-1", "site-2", "site-3"]
    assert env.clients == ["site-1", "site-2", "site-3"]  # FedJob refuses a count beside named sites


# -- a site's own model (--site-models) -------------------------------------------------------------------


class _Workspace:
    def __init__(self, root: Path, job_id: str, site: str) -> None:
        self.root, self.app = root, root / job_id / f"app_{site}"

    def get_app_dir(self, job_id: str) -> str:
        return str(self.app)

    def get_root_dir(self) -> str:
        return str(self.root)


class _Engine:
    def __init__(self, workspace: _Workspace) -> None:
        self.workspace = workspace

    def get_workspace(self) -> _Workspace:
        return self.workspace

    def fire_event(self, event_type: str, fl_ctx: object) -> None:
        pass


def site_workspace(
    root: Path, site_file: dict | None, job_id: str = "eval-job", site: str = "site-1"
) -> tuple[_Workspace, Any]:
    """A site workspace running the evaluation job ``job_id`` (its app: an MMAR stub), its FLARE context, and its
    site file (``local/clara_fl_site.json``) when given."""
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext

    workspace = _Workspace(root, job_id, site)
    (workspace.app / "config").mkdir(parents=True)
    (workspace.app / "config" / "config_train.json").write_text("{}")
    if site_file is not None:
        (root / "local").mkdir(parents=True, exist_ok=True)
        (root / "local" / "clara_fl_site.json").write_text(json.dumps(site_file))
    ctx = FLContext()
    ctx.put(ReservedKey.ENGINE, _Engine(workspace), private=True, sticky=False)
    ctx.put(ReservedKey.RUN_NUM, job_id, private=True, sticky=False)
    ctx.put(ReservedKey.IDENTITY_NAME, site, private=True, sticky=False)
    return workspace, ctx


def submit_own_model(ctx: Any) -> Any:
    from nvflare.apis.signal import Signal

    from clara_fl.fl.site.own_model import OwnModelSubmitter

    return OwnModelSubmitter().execute("submit_model", Shareable(), ctx, Signal())


@pytest.fixture
def no_site_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from clara_fl.fl.site.context import CODE_POLICY_ENV, SITE_CONFIG_ENV

    monkeypatch.delenv(SITE_CONFIG_ENV, raising=False)
    monkeypatch.delenv(CODE_POLICY_ENV, raising=False)


def test_a_site_submits_the_model_its_site_file_names_as_numpy_weights(tmp_path: Path, no_site_env: None) -> None:
    from nvflare.apis.dxo import DataKind, from_shareable

    state = small_network().state_dict()
    (tmp_path / "kept").mkdir()
    torch.save({"model": state, "epoch": 3}, tmp_path / "kept" / "site-1.pt")
    site_file = {"environment": {"KEPT": str(tmp_path / "kept")}, "own_model": "{KEPT}/{SITE_NAME}.pt"}
    _, ctx = site_workspace(tmp_path / "ws", site_file)

    reply = submit_own_model(ctx)

    dxo = from_shareable(reply)
    assert dxo.data_kind == DataKind.WEIGHTS and set(dxo.data) == set(state)
    assert all(not torch.is_tensor(v) and hasattr(v, "dtype") for v in dxo.data.values())


def _training_job(root: Path, job: str, site: str, network: dict[str, Any], age: int = 0) -> Path:
    """A job folder as a training job leaves it at a site: the MMAR's config and its best model, ``age`` s old."""
    import os

    app = root / job / f"app_{site}"
    (app / "config").mkdir(parents=True)
    (app / "config" / "config_train.json").write_text(json.dumps({"train": {"model": network}}))
    model = app / "models" / "model.pt"
    model.parent.mkdir()
    model.touch()
    os.utime(model, (1_000_000 - age, 1_000_000 - age))
    return model


UNET = {"name": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}}


def test_without_a_named_model_the_newest_model_of_an_earlier_training_job_is_found(
    tmp_path: Path, no_site_env: None
) -> None:
    from clara_fl.fl.site.context import SiteContext
    from clara_fl.fl.site.own_model import find_own_model

    root = tmp_path / "ws"
    _training_job(root, "train-old", "site-1", UNET, age=300)
    newest = _training_job(root, "train-new", "site-1", UNET, age=100)
    _training_job(root, "eval-job", "site-1", UNET)
    _training_job(root, "train-other", "site-2", UNET)  # another site's: never this site's
    site = SiteContext(name="site-1", app_dir=str(root / "eval-job" / "app_site-1"))

    found = find_own_model(site, str(root), "eval-job")

    assert found == str(newest)


def test_a_newer_model_of_another_mmars_network_is_not_the_sites_own(tmp_path: Path, no_site_env: None) -> None:
    from clara_fl.fl.site.context import SiteContext
    from clara_fl.fl.site.own_model import find_own_model

    root = tmp_path / "ws"
    same = _training_job(root, "train-spleen", "site-1", UNET, age=300)
    _training_job(root, "train-other-mmar", "site-1", {**UNET, "args": {**UNET["args"], "out_channels": 3}}, age=100)
    _training_job(root, "eval-job", "site-1", UNET)
    site = SiteContext(name="site-1", app_dir=str(root / "eval-job" / "app_site-1"))

    found = find_own_model(site, str(root), "eval-job")

    assert found == str(same)


def test_a_site_without_a_model_of_its_own_answers_with_a_failure_that_names_no_path(
    tmp_path: Path, no_site_env: None
) -> None:
    from nvflare.apis.fl_constant import ReturnCode

    _, ctx = site_workspace(tmp_path / "ws", {"environment": {}})

    reply = submit_own_model(ctx)

    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    reason = reply.get_header(ReservedHeaderKey.ERROR)
    assert reason == "submitting the local model failed: no_own_model"


def test_a_site_model_that_would_run_code_is_refused_unrun_in_a_failure_that_names_no_path(
    tmp_path: Path, no_site_env: None
) -> None:
    from nvflare.apis.fl_constant import ReturnCode

    marker = tmp_path / "ran"
    torch.save({"model": {"w": _WritesAFileWhenUnpickled(marker)}}, tmp_path / "evil.pt")
    _, ctx = site_workspace(tmp_path / "ws", {"environment": {}, "own_model": str(tmp_path / "evil.pt")})

    reply = submit_own_model(ctx)

    reason = reply.get_header(ReservedHeaderKey.ERROR)
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert reason == "submitting the local model failed: ConfigError"
    assert not marker.exists()


# -- a Clara 4.0 MMAR -------------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_clara40_mmars_model_passes_the_check_and_a_site_scores_it_with_the_jobs_mmar(
    tmp_path: Path, synthetic_data: Any
) -> None:
    from clara_fl.fl.site.local_training import LocalValidation, ValidationSettings
    from clara_fl.recipes.evaluate import create_evaluation_job
    from clara_fl.workflows.network import build_train_network

    mmar = Path(__file__).parent / "clara40_mmar"
    torch.save({"model": build_train_network(str(mmar)).state_dict()}, tmp_path / "untrained.pt")  # 4.0: no train_conf
    job = create_evaluation_job(mmar, tmp_path / "job", [GivenModel("untrained", tmp_path / "untrained.pt")])
    weights = {k: v.numpy() for k, v in torch.load(job / "app_server" / "evaluated_models" / "untrained.pt").items()}
    root = synthetic_data.root
    settings = ValidationSettings(
        app_dir=str(job / "app_sites"),
        site_values={"DATA_ROOT": str(root), "DATASET_JSON": str(synthetic_data.dataset_json), "SITE_NAME": "site-1"},
        data_roots=[str(root)],
    )

    metrics = LocalValidation(settings).validate("SRV_untrained", weights)

    assert set(metrics) == {"val_mean_dice"} and 0.0 <= metrics["val_mean_dice"] <= 1.0
