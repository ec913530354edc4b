"""A bad command-line value is a UsageError: one line naming the option, the value given and what was expected,
exit status 2 as argparse's own usage errors; a problem inside a config file stays a ConfigError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clara_fl.apps.common import check_simulation, require_file, require_flare_job, require_mmar
from clara_fl.apps.convert import convert_mmar
from clara_fl.apps.export import parse_shape
from clara_fl.cli import main
from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.fl.jobs.he_context import require_tenseal
from clara_fl.fl.jobs.privacy import parse_privacy_option, privacy_filter
from clara_fl.fl.jobs.site_setup import setup_site
from clara_fl.recipes.algorithms import check_algorithm_args, check_algorithm_under_he, parse_algorithm_args
from clara_fl.recipes.app_configs import find_template
from tests.conftest import SPLEEN_MMAR
from tests.job_apps import LEARNER, configured
from tests.test_privacy_he_options import hide_tenseal
from tests.test_site_setup import make_kit


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def a_flare_job(folder: Path, meta: dict) -> Path:
    """A job folder with ``meta`` and one app holding a client and a server config."""
    (folder / "app" / "config").mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps(meta))
    for side in ("client", "server"):
        (folder / "app" / "config" / f"config_fed_{side}.json").write_text("{}")
    return folder


# -- the message -----------------------------------------------------------------------------------


def test_a_usage_error_names_the_option_the_value_and_what_was_expected() -> None:
    error = UsageError("--num-rounds", "0", "expected a positive integer")

    assert str(error) == "--num-rounds 0: expected a positive integer"


def test_a_value_the_shell_would_split_is_shown_quoted() -> None:
    error = UsageError("--input_shape", "[1, 96]", "expected 5 numbers")

    assert str(error) == "--input_shape '[1, 96]': expected 5 numbers"


def test_an_option_without_a_value_is_named_alone() -> None:
    assert str(UsageError("--he", None, "needs TenSEAL")) == "--he: needs TenSEAL"


def test_the_command_prints_one_line_and_exits_with_argparses_usage_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["export", "-m", str(tmp_path), "--input_shape", "[1, 0]"])

    assert code == 2
    assert error_lines(capsys) == [
        "clara-fl export: error: --input_shape '[1, 0]': expected a JSON list of positive integers, "
        'e.g. "[1, 1, 96, 96, 96]"'
    ]


# -- each kind of bad value ------------------------------------------------------------------------


def test_a_missing_file_is_named_by_its_option_and_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "sites.json")

    with pytest.raises(UsageError) as raised:
        require_file(missing, "--site-config", "site file")

    assert str(raised.value) == f"--site-config {missing}: site file not found"


def test_a_folder_that_is_not_an_mmar_is_named_by_its_option(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as raised:
        require_mmar(str(tmp_path), "-m")

    assert str(raised.value) == f"-m {tmp_path}: not an MMAR: config/config_train.json is missing"


def test_a_folder_that_is_not_a_flare_job_is_named_by_the_job_argument(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as raised:
        require_flare_job(str(tmp_path))

    assert (raised.value.option, raised.value.value) == ("job", str(tmp_path))
    assert "not a FLARE job: meta.json is missing" in raised.value.expected


@pytest.mark.parametrize(
    "n_clients, threads, option, value",
    [(0, 1, "-n", "0"), (2, 0, "-t", "0"), (2, 3, "-t", "3")],
    ids=["no_sites", "no_threads", "more_threads_than_sites"],
)
def test_simulation_counts_are_named_by_their_option_and_value(
    tmp_path: Path, n_clients: int, threads: int, option: str, value: str
) -> None:
    job = a_flare_job(tmp_path / "job", {"deploy_map": {"app": ["@ALL"]}})

    with pytest.raises(UsageError) as raised:
        check_simulation(str(job), n_clients, threads)

    assert (raised.value.option, raised.value.value) == (option, value)


def test_fewer_sites_than_the_job_needs_names_n_and_what_to_use(tmp_path: Path) -> None:
    job = a_flare_job(tmp_path / "job", {"deploy_map": {"app": ["@ALL"]}, "min_clients": 3})

    with pytest.raises(UsageError) as raised:
        check_simulation(str(job), 2, 2)

    assert str(raised.value) == "-n 2: the job needs 3 sites (meta.json: min_clients): use -n 3"


def test_an_export_shape_that_is_no_list_of_positive_integers_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as raised:
        parse_shape("96x96")

    assert (raised.value.option, raised.value.value) == ("--input_shape", "96x96")


def test_a_missing_checkpoint_to_export_is_named_by_model_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["export", "-m", str(tmp_path), "--model_path", "models/nope.pt", "--input_shape", "[1, 1, 8, 8]"])

    [line] = error_lines(capsys)
    assert code == 2
    assert line.startswith(f"clara-fl export: error: --model_path models/nope.pt: checkpoint not found at {tmp_path}")


def test_a_convert_output_inside_the_mmar_is_named_by_o(tmp_path: Path) -> None:
    (tmp_path / "mmar" / "config").mkdir(parents=True)
    inside = str(tmp_path / "mmar" / "converted")

    with pytest.raises(UsageError) as raised:
        convert_mmar(str(tmp_path / "mmar"), inside)

    assert str(raised.value) == f"-o {inside}: expected a folder outside the MMAR"


def test_a_job_output_that_is_a_file_is_named_by_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "job"
    output.write_text("")

    code = main(["job", "create", "-m", str(SPLEEN_MMAR), "-o", str(output)])

    assert code == 2
    assert error_lines(capsys) == [f"clara-fl job: error: --output {output}: the job folder to write is a file"]


def test_a_resume_job_folder_that_does_not_exist_is_named_by_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no_job"

    code = main(["job", "resume", str(missing), str(tmp_path / "run"), "-o", str(tmp_path / "out")])

    assert code == 2
    assert error_lines(capsys) == [f"clara-fl job: error: JOB {missing}: job folder not found"]


def test_an_unknown_job_template_is_named_by_template() -> None:
    with pytest.raises(UsageError) as raised:
        find_template("no_such_template")

    assert (raised.value.option, raised.value.value) == ("--template", "no_such_template")
    assert raised.value.expected.startswith("job template 'no_such_template' not found (known: clara_fedavg_cse")


def test_a_privacy_option_without_key_value_pairs_is_named_by_privacy() -> None:
    with pytest.raises(UsageError) as raised:
        parse_privacy_option("PercentilePrivacy:gamma")

    assert str(raised.value) == "--privacy PercentilePrivacy:gamma: expected NAME[:KEY=VALUE,...]"


def test_a_privacy_filter_argument_it_does_not_take_is_named_after_the_option() -> None:
    with pytest.raises(UsageError) as raised:
        parse_privacy_option("PercentilePrivacy:sigma=1")

    assert str(raised.value) == (
        "--privacy PercentilePrivacy:sigma=1: sigma: not an argument of FLARE 2.9's PercentilePrivacy "
        "(it takes percentile, gamma, data_kinds)"
    )


def test_he_without_tenseal_is_named_by_he(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_tenseal(monkeypatch)

    with pytest.raises(UsageError) as raised:
        require_tenseal()

    assert str(raised.value) == "--he: homomorphic encryption needs TenSEAL: pip install clara-fl[he]"


def test_an_unknown_algorithm_is_named_by_algorithm() -> None:
    with pytest.raises(UsageError) as raised:
        check_algorithm_args("fedx")

    assert (raised.value.option, raised.value.value) == ("--algorithm", "fedx")


def test_an_algorithm_argument_without_a_value_is_named_by_algorithm_arg() -> None:
    with pytest.raises(UsageError) as raised:
        parse_algorithm_args("fedprox", ["mu"])

    assert str(raised.value) == "--algorithm-arg mu: expected NAME=VALUE"


def test_an_algorithm_argument_out_of_its_range_is_named_with_its_value() -> None:
    with pytest.raises(UsageError) as raised:
        parse_algorithm_args("fedprox", ["mu=-1"])

    assert (raised.value.option, raised.value.value) == ("--algorithm-arg", "mu=-1")
    assert "mu must be >= 0" in raised.value.expected


def test_an_algorithm_that_cannot_run_under_he_is_named_by_he() -> None:
    with pytest.raises(UsageError) as raised:
        check_algorithm_under_he("fedbn")

    assert (raised.value.option, raised.value.value) == ("--he", None)
    assert raised.value.expected.startswith("fedbn cannot run with --he (with --he: ")


def test_several_processes_per_site_for_an_algorithm_that_cannot_is_named_by_nproc_per_site() -> None:
    with pytest.raises(UsageError) as raised:
        configured({}, {"components": [LEARNER]}, "ditto", {}, nproc_per_site=2)

    assert str(raised.value) == "--nproc-per-site 2: ditto cannot train in several processes per site"


def test_an_unknown_site_confinement_mode_is_named_by_confinement(tmp_path: Path) -> None:
    kit = make_kit(tmp_path / "site-1")

    with pytest.raises(UsageError) as raised:
        setup_site(kit, confinement="sometimes")

    assert str(raised.value) == "--confinement sometimes: expected one of required, preferred, off"


def test_an_empty_site_value_name_is_named_by_set(tmp_path: Path) -> None:
    kit = make_kit(tmp_path / "site-1")

    with pytest.raises(UsageError) as raised:
        setup_site(kit, {"": "/data"})

    assert str(raised.value) == "--set: environment names must be non-empty strings, got ''"


# -- config files stay config errors ---------------------------------------------------------------


def test_a_bad_job_meta_json_is_a_config_error_naming_the_file_and_json_path(tmp_path: Path) -> None:
    job = a_flare_job(tmp_path / "job", {"deploy_map": []})

    with pytest.raises(ConfigError) as raised:
        require_flare_job(str(job))

    assert (raised.value.file, raised.value.path) == (str(job / "meta.json"), "deploy_map")


def test_a_privacy_filter_in_an_mmar_config_is_a_config_error_naming_the_file_and_json_path() -> None:
    with pytest.raises(ConfigError) as raised:
        privacy_filter("PercentilePrivacy", {"sigma": 1}, "config/config_fed_client.json", "client.outbound_filters[0]")

    assert (raised.value.file, raised.value.path) == (
        "config/config_fed_client.json",
        "client.outbound_filters[0].args.sigma",
    )
