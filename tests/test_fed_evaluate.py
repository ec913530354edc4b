"""``clara-fl evaluate``: the --model option, the weights-only load, the check against the MMAR's network, and
the evaluation job it writes (the simulation and the POC run are in test_fed_evaluate_e2e.py)."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import pytest
import torch

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
        + ["--model", f"other={tmp_path / 'other.pt'}", "-o", str(job)]
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

    app = job / "app"
    server = json.loads((app / "config" / "config_fed_server.json").read_text())
    client = json.loads((app / "config" / "config_fed_client.json").read_text())
    assert [w["id"] for w in server["workflows"]] == ["cross_site_model_eval"]
    assert server["workflows"][0]["args"]["submit_model_task_name"] == ""
    locator = next(c for c in server["components"] if c["id"] == "model_locator")
    assert locator["args"]["models"] == {"untrained": "evaluated_models/untrained.pt"}
    assert [e["tasks"] for e in client["executors"]] == [["validate"]]
    assert not any("learner" in c["path"].lower() for c in client["components"])
    saved = torch.load(app / "evaluated_models" / "untrained.pt", weights_only=True)
    assert set(saved) == set(load_given_model(GivenModel("untrained", spleen_weights)))
    assert json.loads((app / "config" / "environment.json").read_text())["num_workers"] == 0
    assert (app / "config" / "config_cross_validation.json").is_file()


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
    recipe = ClaraFedEvalRecipe(SPLEEN_MMAR, {"untrained": spleen_weights})
    recipe.export(str(tmp_path / "export"))

    exported = tmp_path / "export" / recipe.name
    # by class: FedJob writes a class's own module, where the job model may name a module that re-exports it
    for side in ("server", "client"):
        ours = json.loads((written / "app" / "config" / f"config_fed_{side}.json").read_text())
        theirs = json.loads((exported / "app" / "config" / f"config_fed_{side}.json").read_text())
        assert component_classes(theirs) == component_classes(ours)
    models = exported / "app" / "evaluated_models" / "untrained.pt"
    assert set(torch.load(models, weights_only=True)) == set(
        torch.load(written / "app" / "evaluated_models" / "untrained.pt", weights_only=True)
    )
