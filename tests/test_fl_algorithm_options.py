"""Choosing an FL algorithm for a job: names and arguments checked before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.fl.algorithms import ALGORITHMS, Algorithm, AlgorithmParameter
from clara_fl.recipes.algorithms import check_algorithm_args, parse_algorithm_args
from tests.conftest import SPLEEN_MMAR
from tests.job_apps import LEARNER, configured
from tests.test_errors import run_cli

PROBE = Algorithm(
    name="probe",
    summary="an algorithm for these tests",
    parameters=(
        AlgorithmParameter("mu", float, 0.01, "proximal weight"),
        AlgorithmParameter("steps", int, 2, "steps"),
        AlgorithmParameter("nesterov", bool, False, "momentum kind"),
        AlgorithmParameter("optimizer", str, "sgd", "server optimizer", choices=("sgd", "adam")),
    ),
    site_class="clara_fl.fl.site.local_algorithm.LocalAlgorithm",
    supports_nproc_per_site=False,
)


@pytest.fixture
def probe_algorithm(monkeypatch: pytest.MonkeyPatch) -> Algorithm:
    monkeypatch.setitem(ALGORITHMS, PROBE.name, PROBE)
    return PROBE


def learner_config() -> dict:
    return {"components": [LEARNER]}


def test_an_unknown_algorithm_is_one_line_listing_the_valid_ones() -> None:
    with pytest.raises(UsageError) as raised:
        check_algorithm_args("fedsomething")

    message = str(raised.value)
    assert "fedsomething" in message and "fedavg" in message and "\n" not in message


def test_arguments_are_converted_to_their_types_and_the_rest_take_defaults(probe_algorithm: Algorithm) -> None:
    args = parse_algorithm_args("probe", ["mu=0.5", "nesterov=yes"])

    assert args == {"mu": 0.5, "steps": 2, "nesterov": True, "optimizer": "sgd"}


def test_an_unknown_argument_names_the_valid_ones(probe_algorithm: Algorithm) -> None:
    with pytest.raises(UsageError, match=r"takes no argument lr \(valid: mu \(float, default 0.01\), steps"):
        parse_algorithm_args("probe", ["lr=0.1"])


@pytest.mark.parametrize(
    ("pair", "expected"),
    [("mu=abc", "expects float for mu"), ("steps=1.5", "expects int for steps"), ("optimizer=rmsprop", "one of sgd")],
)
def test_a_value_of_the_wrong_kind_is_refused(probe_algorithm: Algorithm, pair: str, expected: str) -> None:
    with pytest.raises(UsageError, match=expected):
        parse_algorithm_args("probe", [pair])


def test_a_pair_without_equals_is_refused() -> None:
    with pytest.raises(UsageError, match="expected NAME=VALUE"):
        parse_algorithm_args("fedavg", ["mu"])


def test_the_site_learner_is_told_the_algorithm_and_its_checked_arguments(probe_algorithm: Algorithm) -> None:
    client = learner_config()

    _, client = configured({}, client, "probe", {"mu": "0.1"})

    assert client["components"][0]["args"] == {
        "algorithm": "probe",
        "algorithm_args": {"mu": 0.1, "steps": 2, "nesterov": False, "optimizer": "sgd"},
    }


def test_an_algorithm_that_changes_training_refuses_several_processes_per_site(probe_algorithm: Algorithm) -> None:
    with pytest.raises(UsageError, match="cannot train in several processes per site"):
        configured({}, learner_config(), "probe", {}, nproc_per_site=2)


def test_job_create_refuses_an_unknown_algorithm_and_writes_nothing(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    output = tmp_path / "job"

    code, err = run_cli(capsys, "job", "create", "-m", str(SPLEEN_MMAR), "-o", str(output), "--algorithm", "fedx")

    assert code == 2
    assert "unknown FL algorithm 'fedx' (valid: " in err and len(err.strip().splitlines()) == 1
    assert not output.exists()


def test_the_site_refuses_an_unknown_algorithm_by_its_config_path() -> None:
    from clara_fl.fl.site.algorithms import local_algorithm

    with pytest.raises(ConfigError, match=r"components\[clara_learner\].args.algorithm: unknown FL algorithm 'x'"):
        local_algorithm("x")


class CountingAlgorithm:
    """A LocalAlgorithm whose state is one counter."""

    def __init__(self, rounds: int = 0) -> None:
        self.rounds = rounds

    def state_dict(self) -> dict:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.rounds = state["rounds"]


class FileWorkflow:
    """The part of a TrainWorkflow LocalState uses: a training state saved to and loaded from a file."""

    def training_state(self) -> dict:
        return {"epoch": 3}

    def load_training_state(self, path: str) -> dict | None:
        import os

        import torch

        return torch.load(path, weights_only=True) if os.path.isfile(path) else None


def test_the_site_algorithms_state_is_saved_and_restored_with_the_local_state(tmp_path: Path) -> None:
    from clara_fl.fl.site.local_state import LocalState

    path = str(tmp_path / "fl_local_state.pt")
    saved = LocalState(FileWorkflow(), path, CountingAlgorithm(rounds=4))  # type: ignore[arg-type]
    saved.save()
    saved.wait()
    restored = CountingAlgorithm()

    found = LocalState(FileWorkflow(), path, restored).restore()  # type: ignore[arg-type]

    assert found and restored.rounds == 4
