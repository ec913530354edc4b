"""Privacy filters that would ruin training or do nothing are refused before anything is written; the others
say in one line what they do to a site's update (``job create``, the recipe, ``site setup``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clara_fl.cli import main
from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.fl.jobs.privacy import CLARA_FL_DEFAULTS, FLARE_PRIVACY_FILTERS, PRIVACY_FILTERS, parse_privacy_option
from clara_fl.fl.jobs.privacy_check import SiteUpdate, judge_privacy_filter, judge_result_filters
from tests.conftest import SPLEEN_MMAR

UNET = SiteUpdate(
    {"model.0.conv.weight": 1000, "model.0.conv.bias": 10, "model.1.conv.weight": 9000, "model.2.weight": 90},
    optimizer="Adam",
    learning_rate=2e-4,
)
FLARE_SVT_DEFAULTS = {"fraction": 0.1, "epsilon": 0.1, "noise_var": 0.1, "gamma": 1e-5, "tau": 1e-6}


def judged(spec: str, update: SiteUpdate | None = UNET) -> str:
    entry = parse_privacy_option(spec)
    [line] = judge_result_filters([entry], update, "--privacy")
    return line


def refusal(spec: str, update: SiteUpdate | None = UNET) -> str:
    with pytest.raises(UsageError) as refused:
        judged(spec, update)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("--privacy: ")
    return message


# -- clara-fl's defaults ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRIVACY_FILTERS))
def test_a_filter_named_without_arguments_gets_clara_fls_defaults(name: str) -> None:
    entry = parse_privacy_option(name)

    assert entry["path"] == PRIVACY_FILTERS[name]
    assert CLARA_FL_DEFAULTS[name].items() <= entry["args"].items()


def test_explicit_arguments_win_over_clara_fls_defaults() -> None:
    entry = parse_privacy_option("SVTPrivacy:gamma=0.002,fraction=0.5")

    assert (entry["args"]["gamma"], entry["args"]["fraction"]) == (0.002, 0.5)
    assert entry["args"]["noise_var"] == CLARA_FL_DEFAULTS["SVTPrivacy"]["noise_var"]


@pytest.mark.parametrize("name", sorted(PRIVACY_FILTERS))
def test_clara_fls_defaults_pass_the_judgement(name: str) -> None:
    spec = name if name != "ExcludeVars" else "ExcludeVars:exclude_vars=model\\.0\\."

    assert judged(spec).startswith(f"{name}: ")


# -- refused settings ------------------------------------------------------------------------------


def test_svt_at_flares_own_defaults_is_refused_as_releasing_only_noise() -> None:
    spec = "SVTPrivacy:" + ",".join(f"{k}={v}" for k, v in FLARE_SVT_DEFAULTS.items())

    message = refusal(spec)

    assert "releases only noise" in message and "noise_var" in message


def test_svt_clipping_far_under_the_optimizers_step_is_refused_naming_the_learning_rate() -> None:
    message = refusal("SVTPrivacy:gamma=0.00001,noise_var=100")

    assert "lr 0.0002" in message and "set gamma to at least 0.0002" in message


def test_svt_that_releases_no_value_is_refused() -> None:
    assert "releases nothing" in refusal("SVTPrivacy:fraction=0")


def test_exclude_vars_without_variables_is_refused_as_sending_everything() -> None:
    message = refusal("ExcludeVars")

    assert "sends everything" in message and "exclude_vars=" in message


def test_exclude_vars_that_matches_no_tensor_of_the_network_is_refused_with_an_example_name() -> None:
    message = refusal("ExcludeVars:exclude_vars=encoder\\.")

    assert "matches none of the network's 4 tensors" in message and "model.0.conv.weight" in message


def test_exclude_vars_that_matches_every_tensor_is_refused_as_sending_nothing() -> None:
    assert "nothing is sent" in refusal("ExcludeVars:exclude_vars=model")


def test_exclude_vars_with_a_broken_regular_expression_is_refused() -> None:
    assert "not a regular expression" in refusal("ExcludeVars:exclude_vars=model[")


@pytest.mark.parametrize("spec", ["PercentilePrivacy:gamma=0", "PercentilePrivacy:percentile=-5"])
def test_percentile_settings_under_which_flares_filter_does_nothing_are_refused(spec: str) -> None:
    assert "sends every update unchanged" in refusal(spec)


def test_a_percentile_of_100_is_refused_as_releasing_nothing() -> None:
    assert "nothing is released" in refusal("PercentilePrivacy:percentile=100")


# -- what a filter says it does --------------------------------------------------------------------


def test_exclude_vars_says_how_many_tensors_and_values_it_keeps_at_the_site() -> None:
    line = judged("ExcludeVars:exclude_vars=model\\.0\\.")

    assert line == "ExcludeVars: keeps 2 of 4 tensors (1,010 of 10,100 values) at the site and sends the other 2"


def test_exclude_vars_given_as_a_list_matches_exact_names() -> None:
    entry = {"path": FLARE_PRIVACY_FILTERS["ExcludeVars"], "args": {"exclude_vars": ["model.2.weight"]}}

    [line] = judge_result_filters([entry], UNET, "--privacy")

    assert "keeps 1 of 4 tensors (90 of 10,100 values)" in line


def test_svt_says_how_many_values_it_releases_and_how_its_clip_compares_with_the_learning_rate() -> None:
    line = judged("SVTPrivacy")

    assert "90 % of the values (9,090 of 10,100)" in line and "50 x the Adam lr 0.0002" in line


def test_a_filter_written_with_flares_path_and_no_arguments_is_judged_at_flares_defaults() -> None:
    entry = {"path": FLARE_PRIVACY_FILTERS["SVTPrivacy"], "args": {}}

    with pytest.raises(ConfigError, match="releases only noise"):
        judge_result_filters([entry], UNET, "task_result_filters")


def test_filters_that_are_not_privacy_filters_are_passed_over() -> None:
    entry = {"path": "nvflare.app_opt.he.model_encryptor.HEModelEncryptor", "args": {}}

    assert judge_result_filters([entry], UNET, "--privacy") == []


def test_without_a_network_only_the_settings_are_judged() -> None:
    line = judge_privacy_filter("ExcludeVars", {"exclude_vars": "model\\.0\\."}, None, "--privacy")

    assert "matched at each job" in line
    with pytest.raises(UsageError, match="releases only noise"):
        judge_privacy_filter("SVTPrivacy", FLARE_SVT_DEFAULTS, None, "--privacy")


def test_an_optimizer_that_is_not_adam_like_is_not_held_to_its_learning_rate() -> None:
    sgd = SiteUpdate(UNET.tensors, optimizer="SGD", learning_rate=0.1)

    assert "clipped to +-0.01 per step" in judged("SVTPrivacy", sgd)


# -- the commands ----------------------------------------------------------------------------------


def test_the_mmars_network_and_optimizer_are_read_from_its_config() -> None:
    update = SiteUpdate.of_mmar(str(SPLEEN_MMAR))

    assert (update.optimizer, update.learning_rate) == ("Adam", 2e-4)
    assert update.values > 1_000_000 and any(name.startswith("model.0.") for name in update.tensors)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ExcludeVars", "sends everything"),
        ("SVTPrivacy:gamma=0.00001,noise_var=0.1,epsilon=0.1", "releases only noise"),
    ],
    ids=["exclude_vars_without_variables", "svt_at_flares_defaults"],
)
def test_job_create_refuses_a_filter_that_ruins_or_does_nothing_in_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, spec: str, expected: str
) -> None:
    code = main(["job", "create", "-m", str(SPLEEN_MMAR), "-o", str(tmp_path / "job"), "--privacy", spec])

    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and "\n" not in err
    assert not (tmp_path / "job").exists()


def test_job_create_prints_what_each_filter_does_and_writes_the_counting_filters(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(["job", "create", "-m", str(SPLEEN_MMAR), "-o", str(tmp_path / "job"), "--privacy", "SVTPrivacy"])

    out = capsys.readouterr().out
    client = json.loads((tmp_path / "job" / "app" / "config" / "config_fed_client.json").read_text())
    [group] = client["task_result_filters"]
    assert code == 0 and "privacy: SVTPrivacy: sends 90 % of the values" in out
    assert group["filters"][0]["path"] == PRIVACY_FILTERS["SVTPrivacy"]


def test_site_setup_refuses_a_site_policy_that_sends_everything_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    site = tmp_path / "site-1"
    (site / "local").mkdir(parents=True)

    code = main(["site", "setup", str(site), "--privacy", "ExcludeVars"])

    err = capsys.readouterr().err.strip()
    assert code == 2 and "sends everything" in err and "\n" not in err
    assert list((site / "local").iterdir()) == []
