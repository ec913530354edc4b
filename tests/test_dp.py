"""DP-SGD at the sites (--dp): option parsing, the site file's DP policy, the network fix, per-case epsilon
accounting that matches Opacus's accountant (k rows per case: k times the noise), the guard on the rows a case
gives, the budget stop and the job's wiring."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.fl.dp_settings import DPSettings, SiteDPPolicy, parse_dp_option, site_dp_policy
from clara_fl.fl.site.dp import (
    DP_EPSILON_KEY,
    DPBudgetSpent,
    PrivateTraining,
    RowsPerCaseGuard,
    item_rows,
    make_dp_compatible,
)
from clara_fl.fl.site.local_algorithm import LocalAlgorithm
from clara_fl.workflows.round import RoundSpec
from tests.conftest import SPLEEN_MMAR

SAMPLES, BATCH = 16, 4
LOADER = ("config/config_train.json", "train.dataloader", "DataLoader")


# -- the option ------------------------------------------------------------------------------------


def test_the_dp_option_parses_its_three_numbers() -> None:
    dp = parse_dp_option("epsilon=8,delta=1e-5,max_grad_norm=1.5")

    assert (dp.epsilon, dp.delta, dp.max_grad_norm, dp.rounds) == (8.0, 1e-5, 1.5, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("epsilon=8,delta=1e-5", "missing 'max_grad_norm'"),
        ("epsilon=8,delta=1e-5,max_grad_norm=1,sigma=2", "unknown key 'sigma'"),
        ("epsilon=8,epsilon=4,delta=1e-5,max_grad_norm=1", "'epsilon' given twice"),
        ("epsilon=eight,delta=1e-5,max_grad_norm=1", "epsilon must be a number"),
        ("epsilon=0,delta=1e-5,max_grad_norm=1", "epsilon must be a finite number > 0"),
        ("epsilon=8,delta=1,max_grad_norm=1", "delta must be between 0 and 1"),
        ("epsilon=8,delta=1e-5,max_grad_norm=-1", "max_grad_norm must be a finite number > 0"),
        ("8,1e-5,1", "expected epsilon="),
    ],
)
def test_a_bad_dp_option_is_one_usage_error_naming_the_option(text: str, expected: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_dp_option(text)

    assert raised.value.option == "--dp"
    assert expected in str(raised.value) and "\n" not in str(raised.value)


def test_bad_dp_arguments_of_a_learner_are_a_config_error_naming_the_key() -> None:
    where = "components[clara_learner].args.dp"

    with pytest.raises(ConfigError, match=r"args\.dp\.delta.*must be a number"):
        DPSettings.from_args({"epsilon": 1, "delta": "small", "max_grad_norm": 1}, where)
    with pytest.raises(ConfigError, match="unknown key 'noise'"):
        DPSettings.from_args({"epsilon": 1, "delta": 1e-5, "max_grad_norm": 1, "noise": 1}, where)


def test_job_create_refuses_a_bad_dp_option_in_one_line_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clara_fl.cli import main

    output = tmp_path / "job"
    code = main(
        ["job", "create", "-m", str(SPLEEN_MMAR), "-o", str(output), "--dp", "epsilon=-1,delta=0.1,max_grad_norm=1"]
    )

    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert code == 2 and not output.exists()
    assert lines == [
        "clara-fl job: error: --dp epsilon=-1,delta=0.1,max_grad_norm=1: epsilon must be a finite number > 0, got -1"
    ]


# -- which jobs may train with DP ----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ditto", "scaffold"])
def test_an_algorithm_whose_local_step_opacus_cannot_wrap_is_refused(algorithm: str) -> None:
    from clara_fl.recipes.dp import check_dp

    with pytest.raises(UsageError, match=f"--dp: {algorithm} cannot train with DP-SGD"):
        check_dp(algorithm, None)


def test_dp_with_several_processes_per_site_is_refused() -> None:
    from clara_fl.recipes.dp import check_dp

    with pytest.raises(UsageError, match="one process per site"):
        check_dp("fedavg", 2)


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox"])
def test_a_dp_job_gives_learner_validator_and_persistor_the_settings_with_the_jobs_rounds(algorithm: str) -> None:
    from clara_fl.recipes.app_configs import FedAvgSettings, build_job
    from clara_fl.recipes.job_model import PERSISTOR_ID

    dp = parse_dp_option("epsilon=4,delta=1e-5,max_grad_norm=1")
    job = build_job(SPLEEN_MMAR, FedAvgSettings(num_rounds=5, algorithm=algorithm, dp=dp))

    expected = {"epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0, "rounds": 5}
    assert job.client.learner is not None and job.client.learner.args["dp"] == expected
    assert job.client.validator is not None and job.client.validator.args["dp"] == expected
    persistor = job.server.component(PERSISTOR_ID)
    assert persistor is not None and persistor.args["dp_compatible"] is True


# -- the site file's policy ----------------------------------------------------------------------


def test_a_site_requiring_dp_refuses_a_job_without_it() -> None:
    policy = site_dp_policy({"dp": {"required": True, "max_epsilon": 8}}, "clara_fl_site.json")

    assert policy == SiteDPPolicy(True, 8.0)
    assert "requires differential privacy" in str(policy.refusal(None))


def test_a_site_refuses_a_job_asking_more_epsilon_than_it_allows_and_accepts_less() -> None:
    policy = site_dp_policy({"dp": {"required": True, "max_epsilon": 8}})

    assert "epsilon 10, more than this site allows" in str(policy.refusal(DPSettings(10, 1e-5, 1)))
    assert policy.refusal(DPSettings(8, 1e-5, 1)) is None


def test_a_site_without_a_dp_policy_accepts_every_job() -> None:
    assert site_dp_policy({"environment": {}}).refusal(None) is None


@pytest.mark.parametrize(
    ("dp", "path"),
    [({"required": "yes"}, "dp.required"), ({"max_epsilon": 0}, "dp.max_epsilon"), ({"max_eps": 1}, "dp.max_eps")],
)
def test_a_bad_dp_policy_is_a_config_error_naming_the_key(dp: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as raised:
        site_dp_policy({"dp": dp}, "local/clara_fl_site.json")

    assert raised.value.path == path and "local/clara_fl_site.json" in str(raised.value)


def test_the_learner_refuses_a_job_its_site_file_forbids_before_building(tmp_path: Path) -> None:
    from clara_fl.fl.site.learner import dp_refusal

    site_file = tmp_path / "clara_fl_site.json"
    site_file.write_text(json.dumps({"environment": {}, "dp": {"required": True, "max_epsilon": 2}}))

    failure = dp_refusal({"epsilon": 4, "delta": 1e-5, "max_grad_norm": 1, "rounds": 2}, str(site_file))

    assert failure is not None and failure.kind == "dp_policy"
    assert "more than this site allows" in failure.local_text()
    assert "epsilon" not in failure.public_text()  # the server learns the kind of refusal only


# -- the network ---------------------------------------------------------------------------------


def test_batch_norm_becomes_group_norm_keeping_the_optimizers_parameters() -> None:
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)

    lines = make_dp_compatible(network)

    assert isinstance(network[1], torch.nn.GroupNorm)
    assert lines == [
        "DP-SGD: 1 BatchNorm2d layer(s) of train.model replaced by GroupNorm (8 groups), as Opacus documents"
    ]
    assert {id(p) for p in network.parameters()} == {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert sorted(network.state_dict()) == ["0.bias", "0.weight", "1.bias", "1.weight"]


def test_a_layer_opacus_cannot_train_is_refused_by_name() -> None:
    network = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.InstanceNorm1d(4, affine=True, track_running_stats=True)
    )

    with pytest.raises(ConfigError, match=r"layer '1' \(InstanceNorm1d\) cannot train with DP-SGD"):
        make_dp_compatible(network)


# -- accounting ----------------------------------------------------------------------------------


def _sample() -> dict[str, torch.Tensor]:
    return {"image": torch.randn(4), "label": torch.randn(1)}


def _workflow(tmp_path: Path, rows: int = 1, later_rows: int | None = None) -> SimpleNamespace:
    """A MONAI SupervisedTrainer on a tiny network with BatchNorm: the parts a site's algorithm sees. Each case
    gives ``rows`` samples (a list, as a multi-sample transform makes it; one: a dict) through MONAI's
    ``list_data_collate``; with ``later_rows``, every case but the first gives that many."""
    from monai.data import DataLoader
    from monai.engines import SupervisedTrainer

    torch.manual_seed(0)
    counts = [rows] + [later_rows or rows] * (SAMPLES - 1)
    data = [[_sample() for _ in range(n)] if n > 1 else _sample() for n in counts]
    dataset: Any = data  # a list of cases, as torch's DataLoader takes it
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    network = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 1)
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.01),
        loss_function=torch.nn.MSELoss(),
    )
    return SimpleNamespace(network=network, trainer=trainer, ckpt_dir=str(tmp_path))


def _round(private: PrivateTraining, workflow: SimpleNamespace) -> dict[str, Any]:
    private.before_round(workflow, {}, {})
    workflow.trainer.state.max_epochs = workflow.trainer.state.epoch + 1
    workflow.trainer.run()
    return private.after_round(workflow, {}, private.steps_per_round)


def _case_noise_multiplier(dp: DPSettings) -> float:
    """Opacus's noise multiplier for the budget at the case level: cases drawn at BATCH / SAMPLES, the job's steps."""
    from opacus.accountants.utils import get_noise_multiplier

    sample_rate, steps_per_round = BATCH / SAMPLES, SAMPLES // BATCH
    return float(
        get_noise_multiplier(
            target_epsilon=dp.epsilon,
            target_delta=dp.delta,
            sample_rate=sample_rate,
            steps=steps_per_round * dp.rounds,
        )
    )


def _opacus_epsilon(dp: DPSettings, rounds_done: int) -> float:
    """Opacus's own RDP accountant for the per-case settings (its noise multiplier per case), step by step."""
    from opacus.accountants import RDPAccountant

    sample_rate, steps_per_round = BATCH / SAMPLES, SAMPLES // BATCH
    sigma = _case_noise_multiplier(dp)
    accountant = RDPAccountant()
    for _ in range(steps_per_round * rounds_done):
        accountant.step(noise_multiplier=sigma, sample_rate=sample_rate)
    return float(accountant.get_epsilon(dp.delta))


@pytest.mark.integration  # trains a MONAI trainer under Opacus (seconds on a loaded machine)
@pytest.mark.parametrize("rows", [1, 3])
def test_the_epsilon_a_site_reports_each_round_is_opacus_accountants_per_case(tmp_path: Path, rows: int) -> None:
    workflow = _workflow(tmp_path, rows=rows)
    dp = DPSettings(epsilon=3.0, delta=1e-5, max_grad_norm=1.0, rounds=3)
    private = PrivateTraining(LocalAlgorithm(), dp, RoundSpec(local_epochs=1))
    private.setup(workflow)

    reported = [_round(private, workflow)[DP_EPSILON_KEY] for _ in range(2)]

    assert reported == pytest.approx([_opacus_epsilon(dp, 1), _opacus_epsilon(dp, 2)], rel=1e-9)
    assert reported[0] < reported[1] < dp.epsilon
    assert private.rows_per_case == rows
    # a case's k rows move the clipped sum by up to k x C: the noise added per row is k times the per-case one
    assert workflow.trainer.optimizer.noise_multiplier == pytest.approx(rows * _case_noise_multiplier(dp), rel=1e-12)


@pytest.mark.integration  # builds Opacus's loader and trains until the refusal
def test_a_case_giving_more_rows_than_the_first_is_refused_before_its_step(tmp_path: Path) -> None:
    workflow = _workflow(tmp_path, rows=2, later_rows=3)
    dp = DPSettings(epsilon=3.0, delta=1e-5, max_grad_norm=1.0, rounds=3)
    private = PrivateTraining(LocalAlgorithm(), dp, RoundSpec(local_epochs=1))
    private.setup(workflow)

    with pytest.raises(ConfigError, match="a case gave 3 batch rows, more than the 2 per case") as raised:
        _round(private, workflow)

    assert raised.value.path == "train.dataloader" and "\n" not in str(raised.value)
    assert private.history == []  # the first batch (seeded) holds a later case: no step ran, none was accounted


@pytest.mark.integration  # trains a MONAI trainer under Opacus (seconds on a loaded machine)
def test_the_spent_epsilon_survives_a_rebuilt_site_through_its_local_state(tmp_path: Path) -> None:
    dp = DPSettings(epsilon=3.0, delta=1e-5, max_grad_norm=1.0, rounds=3)
    workflow = _workflow(tmp_path)
    first = PrivateTraining(LocalAlgorithm(), dp, RoundSpec(local_epochs=1))
    first.setup(workflow)
    spent = _round(first, workflow)[DP_EPSILON_KEY]

    rebuilt = PrivateTraining(LocalAlgorithm(), dp, RoundSpec(local_epochs=1))
    rebuilt.setup(_workflow(tmp_path))
    rebuilt.load_state_dict(torch.load(_saved(first.state_dict(), tmp_path), weights_only=True))

    assert rebuilt.epsilon() == pytest.approx(spent, rel=1e-12)


def _saved(state: dict[str, Any], tmp_path: Path) -> Path:
    path = tmp_path / "state.pt"
    torch.save(state, path)
    return path


def test_the_local_state_keeps_the_rows_per_case_with_a_history_of_per_case_multipliers() -> None:
    private = PrivateTraining(LocalAlgorithm(), DPSettings(3.0, 1e-5, 1.0, rounds=3), RoundSpec(local_epochs=1))
    private.rows_per_case = 4
    private.history.append((1.5, 0.25, 8))

    state = private.state_dict()

    assert state["dp_rows_per_case"] == 4 and state["dp_accounting"] == "per_case"
    assert state["dp_history"] == [[1.5, 0.25, 8]]


def test_a_history_saved_per_batch_row_is_re_accounted_per_case_on_resume() -> None:
    private = PrivateTraining(LocalAlgorithm(), DPSettings(3.0, 1e-5, 1.0, rounds=3), RoundSpec(local_epochs=1))
    private.rows_per_case = 4  # what setup() measured at this site

    private.load_state_dict({"inner": {}, "dp_history": [[6.0, 0.25, 8]]})  # a state from before per-case accounting

    assert private.history == [(1.5, 0.25, 8)]


# -- the rows a case gives -------------------------------------------------------------------------


def _cases(*rows: int) -> list[Any]:
    return [[_sample() for _ in range(n)] if n > 1 else _sample() for n in rows]


def test_a_case_gives_one_row_per_sample_of_its_list_and_one_for_a_dict() -> None:
    assert [item_rows(case) for case in _cases(4, 1)] == [4, 1]
    assert item_rows((torch.zeros(4), torch.zeros(1))) == 1  # one sample's parts


def test_the_guard_collates_cases_giving_at_most_their_rows() -> None:
    from monai.data import list_data_collate

    guard = RowsPerCaseGuard(list_data_collate, 4, LOADER)

    batch = guard(_cases(4, 2, 3))

    assert batch["image"].shape == (9, 4)


def test_the_guard_refuses_a_case_giving_more_rows_in_one_line_naming_the_loader() -> None:
    from monai.data import list_data_collate

    guard = RowsPerCaseGuard(list_data_collate, 2, LOADER)

    with pytest.raises(ConfigError) as raised:
        guard(_cases(2, 3))

    assert str(raised.value).startswith("config/config_train.json: train.dataloader: DP-SGD: a case gave 3 batch rows")
    assert "\n" not in str(raised.value)


def test_the_guard_refuses_a_collate_whose_rows_it_cannot_count() -> None:
    from torch.utils.data import default_collate

    guard = RowsPerCaseGuard(default_collate, 2, LOADER)  # torch's collate turns a list of samples into columns

    with pytest.raises(ConfigError, match="cannot count the rows each case gives: 2 cases of 4 rows collated into 2"):
        guard(_cases(2, 2))


def test_a_refusal_in_a_loader_worker_reaches_the_main_process_with_the_loaders_config_item() -> None:
    from monai.data import list_data_collate

    from clara_fl.config.errors import root_cause
    from clara_fl.workflows.failures import NOTE

    cases: Any = _cases(2, 3)
    guard = RowsPerCaseGuard(list_data_collate, 2, LOADER)
    loader = torch.utils.data.DataLoader(cases, batch_size=2, num_workers=1, collate_fn=guard)

    with pytest.raises(ConfigError) as raised:
        next(iter(loader))

    kind, message = root_cause(raised.value)
    assert kind == "ConfigError" and message.startswith("DP-SGD: a case gave 3 batch rows")
    assert NOTE + json.dumps({"file": LOADER[0], "json_path": LOADER[1], "component": LOADER[2], "case": None}) in str(
        raised.value
    )


@pytest.mark.integration  # trains a MONAI trainer under Opacus (seconds on a loaded machine)
def test_a_site_stops_once_another_round_would_exceed_its_budget(tmp_path: Path) -> None:
    workflow = _workflow(tmp_path)
    dp = DPSettings(epsilon=2.0, delta=1e-5, max_grad_norm=1.0, rounds=1)  # the noise is planned for one round
    private = PrivateTraining(LocalAlgorithm(), dp, RoundSpec(local_epochs=1))
    private.setup(workflow)
    spent = _round(private, workflow)[DP_EPSILON_KEY]

    with pytest.raises(DPBudgetSpent, match="privacy budget spent"):
        private.before_round(workflow, {}, {})
    assert spent <= dp.epsilon and private.epsilon() == spent  # nothing more was spent
