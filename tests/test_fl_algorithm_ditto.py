"""Ditto: the job's learner entry, and the site's personalized model on a tiny network (no FLARE run)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.fl.site.algorithms import local_algorithm
from clara_fl.fl.site.ditto import Ditto
from clara_fl.recipes.algorithms import parse_algorithm_args
from tests.job_apps import configured


def client_config() -> dict:
    return {"components": [{"id": "clara_learner", "path": "clara_fl.fl.site.learner.ClaraLearner", "args": {}}]}


def ditto_site(ditto_lambda: float = 0.1, personal_epochs: int = 1, personal_start: str | None = None) -> Ditto:
    args = {"lambda": ditto_lambda, "personal_epochs": personal_epochs, "personal_start": personal_start}
    site = local_algorithm("ditto", args)
    assert isinstance(site, Ditto)
    return site


def test_ditto_tells_the_site_learner_its_lambda_and_personal_epochs() -> None:
    client = client_config()

    _, client = configured({}, client, "ditto", parse_algorithm_args("ditto", ["lambda=0.5", "personal_epochs=2"]))

    args = client["components"][0]["args"]
    assert args["algorithm"] == "ditto"
    assert args["algorithm_args"] == {"lambda": 0.5, "personal_epochs": 2, "personal_start": "every_round"}


def test_ditto_refuses_several_processes_per_site() -> None:
    with pytest.raises(UsageError, match="ditto cannot train in several processes per site"):
        configured({}, client_config(), "ditto", {}, nproc_per_site=2)


def test_ditto_refuses_a_negative_lambda() -> None:
    with pytest.raises(UsageError, match="lambda must be >= 0"):
        configured({}, client_config(), "ditto", {"lambda": -1})


# --- the site side ---


def tiny_workflow(models: Path, seed: int = 0) -> SimpleNamespace:
    """A MONAI SupervisedTrainer on y = 2x with a 1-weight network, as a TrainWorkflow offers it."""
    from monai.engines import SupervisedTrainer

    torch.manual_seed(seed)
    network = torch.nn.Linear(1, 1, bias=False)
    x = torch.linspace(-1, 1, 8).reshape(8, 1)
    data = [{"image": x[i], "label": 2 * x[i]} for i in range(8)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.5),
        loss_function=torch.nn.MSELoss(),
    )
    models.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(trainer=trainer, network=network, ckpt_dir=str(models))


def ditto_round(ditto, workflow: SimpleNamespace, global_weight: float) -> dict:
    global_weights = {"weight": np.full((1, 1), global_weight, dtype=np.float32)}
    ditto.before_round(workflow, global_weights, {})
    return ditto.after_round(workflow, global_weights, steps=0)


def personal_weight(ditto) -> float:
    return float(ditto.model_for_validation(None)["weight"].item())


def test_the_personalized_model_learns_the_sites_data_and_is_what_the_site_submits(tmp_path: Path) -> None:
    workflow = tiny_workflow(tmp_path / "models")
    ditto = ditto_site(0.0, 5)
    ditto.setup(workflow)

    meta = ditto_round(ditto, workflow, global_weight=0.0)

    assert meta == {"ditto_personal_steps": 10}
    assert abs(personal_weight(ditto) - 2.0) < 0.2
    # the site's own network (the global model's training) is untouched by personal training
    assert workflow.network.weight.item() != pytest.approx(personal_weight(ditto))


def test_lambda_pulls_the_personalized_model_towards_the_global_model(tmp_path: Path) -> None:
    free, pulled = ditto_site(0.0, 2), ditto_site(1.0, 2)
    for name, ditto in (("free", free), ("pulled", pulled)):
        workflow = tiny_workflow(tmp_path / name)
        ditto.setup(workflow)
        ditto_round(ditto, workflow, global_weight=-1.0)

    assert abs(personal_weight(pulled) + 1.0) < abs(personal_weight(free) + 1.0)


def test_the_personalized_model_is_written_to_the_models_folder(tmp_path: Path) -> None:
    workflow = tiny_workflow(tmp_path / "models")
    ditto = ditto_site()
    ditto.setup(workflow)

    ditto_round(ditto, workflow, global_weight=0.0)

    saved = torch.load(tmp_path / "models" / "personalized_model.pt", weights_only=True)
    assert saved["model"]["weight"].item() == pytest.approx(personal_weight(ditto))


def test_before_any_round_the_site_submits_its_usual_model(tmp_path: Path) -> None:
    ditto = ditto_site()
    ditto.setup(tiny_workflow(tmp_path / "models"))

    assert ditto.model_for_validation(None) is None


def test_a_restarted_site_resumes_the_personalized_model_and_its_optimizer(tmp_path: Path) -> None:
    first = ditto_site()
    first.setup(tiny_workflow(tmp_path / "a"))
    ditto_round(first, tiny_workflow(tmp_path / "a"), global_weight=0.0)
    saved = torch.load(_saved(first, tmp_path / "state.pt"), weights_only=True)

    restarted = ditto_site()
    restarted.load_state_dict(saved)  # the Learner restores its local state before or after setup
    restarted.setup(tiny_workflow(tmp_path / "b", seed=1))

    assert personal_weight(restarted) == pytest.approx(personal_weight(first))
    assert restarted.state_dict()["personal_epochs_done"] == 1


def _saved(ditto, path: Path) -> Path:
    torch.save(ditto.state_dict(), path)
    return path


def personal_after_rounds(tmp_path: Path, personal_start: str, global_weights: list[float]) -> float:
    workflow = tiny_workflow(tmp_path / f"{personal_start}-{len(global_weights)}")
    ditto = ditto_site(0.0, 1, personal_start)
    ditto.setup(workflow)
    for weight in global_weights:
        ditto_round(ditto, workflow, global_weight=weight)
    return personal_weight(ditto)


def test_by_default_each_rounds_personal_training_starts_from_that_rounds_global_model(tmp_path: Path) -> None:
    fine_tuned_once = personal_after_rounds(tmp_path, "every_round", [-1.0])

    after_two_rounds = personal_after_rounds(tmp_path, "every_round", [0.0, -1.0])

    assert after_two_rounds == pytest.approx(fine_tuned_once)


def test_first_round_start_trains_one_personalized_model_on_across_rounds(tmp_path: Path) -> None:
    fine_tuned_once = personal_after_rounds(tmp_path, "first_round", [-1.0])

    after_two_rounds = personal_after_rounds(tmp_path, "first_round", [0.0, -1.0])

    # two rounds of training from the first global model, not one from the second's
    assert abs(after_two_rounds - 2.0) < abs(fine_tuned_once - 2.0)


def test_the_ditto_defaults_start_personal_training_from_every_rounds_global_model() -> None:
    assert parse_algorithm_args("ditto", [])["personal_start"] == "every_round"
    assert ditto_site().personal_start == "every_round"


def test_an_unknown_personal_start_is_a_one_line_usage_error() -> None:
    with pytest.raises(UsageError, match="ditto: personal_start must be one of every_round, first_round, got 'never'"):
        parse_algorithm_args("ditto", ["personal_start=never"])


def test_a_ditto_site_built_with_an_unknown_personal_start_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="personal_start must be one of every_round, first_round, got 'never'"):
        Ditto(**{"lambda": 0.1, "personal_start": "never"})


def test_a_round_records_the_personal_trainings_mean_loss_and_prox_term(tmp_path: Path) -> None:
    workflow = tiny_workflow(tmp_path / "models")
    ditto = ditto_site(1.0, 2)
    ditto.setup(workflow)

    ditto_round(ditto, workflow, global_weight=0.0)

    losses = ditto.round_losses
    assert set(losses) == {"loss", "prox"}
    assert losses["loss"] > 0 and losses["prox"] > 0  # the personal model moved away from the global model


def test_a_trainer_without_a_loss_is_a_clear_error(tmp_path: Path) -> None:
    workflow = tiny_workflow(tmp_path / "models")
    workflow.trainer.loss_function = None

    with pytest.raises(ConfigError, match="ditto needs a supervised trainer; SupervisedTrainer has no loss_function"):
        ditto_site().setup(workflow)


# --- the cross-site table of a Ditto run ---

RESULTS = {
    "site-1": {"SRV_FL_global_model.pt": {"val_mean_dice": 0.5}, "site-1": {"val_mean_dice": 0.7}},
    "site-2": {"SRV_FL_global_model.pt": {"val_mean_dice": 0.4}, "site-1": {"val_mean_dice": 0.3}},
}


def write_client_config(run: Path, algorithm: str) -> None:
    config = run / "site-1" / "simulate_job" / "app_site-1" / "config" / "config_fed_client.json"
    config.parent.mkdir(parents=True)
    client = client_config()
    _, client = configured({}, client, algorithm, {})
    config.write_text(json.dumps(client))


def test_a_ditto_runs_table_labels_the_sites_models_personalized(tmp_path: Path) -> None:
    from clara_fl.fl.jobs.results import format_cross_site_table, site_model_label

    write_client_config(tmp_path, "ditto")

    table = format_cross_site_table(RESULTS, "val_mean_dice", site_model_label(tmp_path))

    header = table.splitlines()[1].split()
    assert header[-2:] == ["site-1", "(personalized)"] and "SRV_FL_global_model" in header


def test_a_fedavg_runs_table_names_the_sites_models_plainly(tmp_path: Path) -> None:
    from clara_fl.fl.jobs.results import site_model_label

    write_client_config(tmp_path, "fedavg")

    assert site_model_label(tmp_path) is None


def test_a_ditto_runs_report_labels_the_sites_models_personalized(tmp_path: Path) -> None:
    from clara_fl.report.build import write_report

    workspace = tmp_path / "0a1b2c" / "workspace"
    (workspace / "cross_site_val").mkdir(parents=True)
    (workspace / "cross_site_val" / "cross_val_results.json").write_text(json.dumps(RESULTS))
    client = client_config()
    client["components"][0]["args"]["local_epochs"] = 1
    _, client = configured({}, client, "ditto", {})
    (workspace / "app_server" / "config").mkdir(parents=True)
    (workspace / "app_server" / "config" / "config_fed_client.json").write_text(json.dumps(client))

    written = write_report(tmp_path / "0a1b2c", tmp_path / "out")

    cross_site = written.html.read_text().split('id="cross-site"')[1].split("</section>")[0]
    assert "<th>site-1 (personalized)</th>" in cross_site and "<th>SRV_FL_global_model.pt</th>" in cross_site


def test_a_runs_cross_site_table_shows_the_servers_key_metric_and_the_personalized_models(tmp_path: Path) -> None:
    from clara_fl.fl.jobs.results import cross_site_table

    write_client_config(tmp_path, "ditto")
    server = tmp_path / "server" / "simulate_job" / "app_server" / "config" / "config_fed_server.json"
    server.parent.mkdir(parents=True)
    server.write_text(json.dumps({"components": [{"id": "model_selector", "args": {"key_metric": "val_acc"}}]}))
    results = tmp_path / "server" / "simulate_job" / "cross_site_val" / "cross_val_results.json"
    results.parent.mkdir(parents=True)
    accuracy = {
        site: {owner: {"val_acc": m["val_mean_dice"]} for owner, m in row.items()} for site, row in RESULTS.items()
    }
    results.write_text(json.dumps(accuracy))

    table = cross_site_table(tmp_path)

    assert table is not None and table.splitlines()[0] == "val_acc (cross-site validation)"
    assert table.splitlines()[1].split()[-2:] == ["site-1", "(personalized)"] and "0.7000" in table


def test_a_run_without_cross_site_results_has_no_table(tmp_path: Path) -> None:
    from clara_fl.fl.jobs.results import cross_site_table

    assert cross_site_table(tmp_path) is None
