"""Fair defaults: every algorithm's default budget, SCAFFOLD's SGD line at job create, and a site keeping the better
of the global and its personalized model (no FLARE run)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clara_fl.fl.site.algorithms import local_algorithm
from clara_fl.recipes.algorithms import parse_algorithm_args
from tests.conftest import SPLEEN_MMAR, site_ctx
from tests.job_apps import configured
from tests.test_fl_algorithm_ditto import client_config, tiny_workflow

# --- Ditto: the personalized model gets the round's budget ---


def ditto_after_a_round(tmp_path: Path, round_steps: int, **args: Any) -> dict:
    workflow = tiny_workflow(tmp_path / "models")  # 8 samples, batches of 4: 2 iterations per epoch
    ditto = local_algorithm("ditto", args)
    ditto.setup(workflow)
    global_weights = {"weight": np.zeros((1, 1), dtype=np.float32)}
    ditto.before_round(workflow, global_weights, {})
    return ditto.after_round(workflow, global_weights, steps=round_steps)


def test_dittos_personal_training_follows_the_rounds_iterations_by_default(tmp_path: Path) -> None:
    meta = ditto_after_a_round(tmp_path, round_steps=6)  # a round of 3 local epochs

    assert meta == {"ditto_personal_steps": 6}


def test_dittos_personal_training_stops_inside_an_epoch_when_the_round_did(tmp_path: Path) -> None:
    meta = ditto_after_a_round(tmp_path, round_steps=3)  # a steps_aggregation round of 3 iterations

    assert meta == {"ditto_personal_steps": 3}


def test_dittos_personal_epochs_argument_overrides_the_rounds_budget(tmp_path: Path) -> None:
    meta = ditto_after_a_round(tmp_path, round_steps=6, personal_epochs=1)

    assert meta == {"ditto_personal_steps": 2}


def test_a_ditto_job_leaves_personal_epochs_to_the_sites_round_unless_given() -> None:
    _, unset = configured({}, client_config(), "ditto", parse_algorithm_args("ditto", []))
    _, given = configured({}, client_config(), "ditto", parse_algorithm_args("ditto", ["personal_epochs=2"]))

    start = {"personal_start": "every_round"}
    assert unset["components"][0]["args"]["algorithm_args"] == {"lambda": 0.1, **start}
    assert given["components"][0]["args"]["algorithm_args"] == {"lambda": 0.1, "personal_epochs": 2, **start}


def test_the_algorithm_help_states_the_budget_and_dittos_default() -> None:
    from clara_fl.fl.algorithms.catalog import algorithms_help

    text = algorithms_help()

    assert "personal_epochs (int, default the round's local training, iteration for iteration)" in text
    assert "same training budget" in text and "--algorithm-arg overrides any default" in text


# --- FedOpt: a server lr that learns with the chosen server optimizer ---


@pytest.mark.parametrize(
    ("given", "lr"), [([], 1.0), (["optimizer=adam"], 0.001), (["optimizer=adam", "lr=0.01"], 0.01)]
)
def test_fedopts_server_lr_defaults_by_optimizer_and_an_algorithm_arg_overrides_it(given: list[str], lr: float) -> None:
    from clara_fl.fl.algorithms import algorithm_named

    fedopt = algorithm_named("fedopt")
    args = fedopt.server_args(parse_algorithm_args("fedopt", given))

    generator = fedopt.server.generator_args(args, "persistor", 5)  # type: ignore[misc]

    assert generator["lr"] == lr and generator["momentum"] == 0.6


# --- SCAFFOLD: the SGD assumption said at job create ---


def mmar_with_optimizer(root: Path, optimizer: dict[str, Any]) -> Path:
    (root / "config").mkdir(parents=True)
    (root / "config" / "config_train.json").write_text(json.dumps({"train": {"optimizer": optimizer}}))
    return root


@pytest.mark.parametrize(
    ("optimizer", "said"),
    [
        ({"name": "Adam", "args": {"lr": 0.001}}, True),
        ({"path": "torch.optim.Adam#opt", "args": {}}, True),
        ({"name": "SGD", "args": {"lr": 0.01}}, False),
        ({"path": "torch.optim.SGD", "args": {}}, False),
    ],
)
def test_scaffold_says_it_assumes_sgd_only_when_the_mmar_trains_with_another_optimizer(
    tmp_path: Path, optimizer: dict[str, Any], said: bool
) -> None:
    from clara_fl.fl.algorithms.optimizer_notes import optimizer_note

    note = optimizer_note("scaffold", mmar_with_optimizer(tmp_path, optimizer))

    assert (note is not None) == said
    if note is not None:
        assert "scaffold assumes the sites train with plain SGD" in note and "train.optimizer is Adam" in note


def test_algorithms_that_assume_nothing_of_the_optimizer_say_nothing(tmp_path: Path) -> None:
    from clara_fl.fl.algorithms.optimizer_notes import optimizer_note

    mmar = mmar_with_optimizer(tmp_path, {"name": "Adam", "args": {}})

    assert [optimizer_note(name, mmar) for name in ("fedavg", "fedprox", "ditto", "fedbn", "fedopt")] == [None] * 5


def test_a_malformed_optimizer_is_one_line_naming_the_config_item(tmp_path: Path) -> None:
    from clara_fl.config.errors import ConfigError
    from clara_fl.fl.algorithms.optimizer_notes import optimizer_note

    mmar = mmar_with_optimizer(tmp_path, {"name": "Adam", "path": "torch.optim.Adam"})

    with pytest.raises(ConfigError, match="config_train.json: train.optimizer: give either 'name' or 'path'"):
        optimizer_note("scaffold", mmar)


def test_job_create_prints_the_scaffold_line_for_the_spleen_mmar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clara_fl.cli import main

    code = main(["job", "create", "-m", str(SPLEEN_MMAR), "-o", str(tmp_path / "job"), "--algorithm", "scaffold"])

    notes = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("note:")]
    assert code == 0 and len(notes) == 1 and "train.optimizer is Adam" in notes[0]


# --- a site keeps the better of the global and its personalized model ---


def weights(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2,), value, dtype=np.float32)}


def score_of(model: Mapping[str, np.ndarray]) -> float:
    return float(model["w"][0])  # a model's validation score is its weight: known in advance


def test_the_better_model_is_kept_and_its_score_recorded(tmp_path: Path) -> None:
    from clara_fl.fl.site.keep_better import KeepBetter

    keeper = KeepBetter(str(tmp_path / "site_best_model.pt"))

    choice = keeper.choose("val_mean_dice", weights(0.4), weights(0.7), score_of)

    saved = torch.load(tmp_path / "site_best_model.pt", weights_only=True)
    assert (choice.winner, choice.kept, choice.kept_score) == ("personalized", True, pytest.approx(0.7))
    assert saved["model"]["w"].tolist() == pytest.approx([0.7, 0.7]) and saved["source"] == "personalized"


def test_a_later_round_replaces_the_kept_model_only_with_a_better_one(tmp_path: Path) -> None:
    from clara_fl.fl.site.keep_better import KeepBetter

    keeper = KeepBetter(str(tmp_path / "site_best_model.pt"))
    keeper.choose("val_mean_dice", weights(0.4), weights(0.7), score_of)

    worse = keeper.choose("val_mean_dice", weights(0.6), weights(0.5), score_of)
    better = KeepBetter(keeper.path).choose("val_mean_dice", weights(0.9), weights(0.5), score_of)  # a restarted site

    assert (worse.winner, worse.kept, worse.kept_score) == ("global", False, pytest.approx(0.7))
    assert (better.winner, better.kept, better.kept_score) == ("global", True, pytest.approx(0.9))
    assert torch.load(keeper.path, weights_only=True)["model"]["w"].tolist() == pytest.approx([0.9, 0.9])


def test_a_global_score_the_site_already_measured_is_not_measured_again(tmp_path: Path) -> None:
    from clara_fl.fl.site.keep_better import KeepBetter

    scored: list[float] = []

    def counting_score(model: Mapping[str, np.ndarray]) -> float:
        scored.append(score_of(model))
        return score_of(model)

    choice = KeepBetter(str(tmp_path / "kept.pt")).choose(
        "val_mean_dice", weights(0.8), weights(0.7), counting_score, global_score=0.8
    )

    assert scored == [pytest.approx(0.7)]  # the personalized model only
    assert (choice.winner, choice.kept_score) == ("global", pytest.approx(0.8))


def test_the_choice_holds_only_the_metric_numbers_and_which_model_won(tmp_path: Path) -> None:
    from clara_fl.fl.site.keep_better import KeepBetter

    choice = KeepBetter(str(tmp_path / "kept.pt")).choose("val_mean_dice", weights(0.4), weights(0.7), score_of)

    assert choice.fields() == {
        "metric": "val_mean_dice",
        "global": pytest.approx(0.4),
        "personalized": pytest.approx(0.7),
        "winner": "personalized",
        "kept": 1,
        "kept_score": pytest.approx(0.7),
    }


class SiteThatKept:
    """The site's confined process answering a train task with its keep_better_model choice."""

    def call(self, method: str, params: dict[str, Any], payload: Any = None, *args: Any, **kwargs: Any) -> Any:
        if method == "train":
            kept = {"metric": "val_mean_dice", "global": 0.4, "personalized": 0.7, "winner": "personalized",
                    "kept": 1, "kept_score": 0.7}  # fmt: skip
            return {"steps": 4, "data_kind": "WEIGHT_DIFF", "kept": kept}, {"weights": {"w": np.ones(2)}, "meta": {}}
        return {}, None

    def stop(self) -> None:
        pass


def test_the_learner_writes_the_sites_choice_as_a_site_event_and_the_report_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.signal import Signal
    from nvflare.app_common.app_constant import AppConstants

    from clara_fl.fl.site import learner as learner_module
    from clara_fl.report.readers import kept_models
    from clara_fl.runtime import events as ev

    app = tmp_path / "app_site-1"
    (app / "config").mkdir(parents=True)
    (app / "config" / "config_train.json").write_text("{}")
    monkeypatch.setattr(learner_module, "site_backend", lambda spec: SiteThatKept())
    learner = learner_module.ClaraLearner(keep_better_model=True)
    learner.initialize({}, site_ctx(app, tmp_path))
    task = DXO(data_kind=DataKind.WEIGHTS, data={"w": np.zeros(2)}).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, 3)

    learner.train(task, site_ctx(app, tmp_path), Signal())

    events = ev.read_events(app / ev.SITE_EVENTS_FILE)
    [kept] = [e for e in events if e.kind == ev.SITE_MODEL_KEPT]
    assert (kept.round, kept.site, kept.text("winner"), kept.numbers()["kept_score"]) == (
        3,
        "site-1",
        "personalized",
        0.7,
    )
    [shown] = kept_models({"site-1": events})
    assert (shown.site, shown.round, shown.winner, shown.kept, shown.global_score) == (
        "site-1",
        3,
        "personalized",
        True,
        0.4,
    )


def test_a_site_file_decides_keep_better_model_and_refuses_a_non_boolean(tmp_path: Path) -> None:
    from clara_fl.config.errors import ConfigError
    from clara_fl.fl.site.context import site_options

    assert site_options({"keep_better_model": True})["keep_better_model"] is True
    assert site_options({})["keep_better_model"] is None
    with pytest.raises(ConfigError, match="site.json: keep_better_model: must be true or false, got 'yes'"):
        site_options({"keep_better_model": "yes"}, str(tmp_path / "site.json"))
