"""Shared fixtures: tiny synthetic data and throw-away copies of the shipped MMARs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
SPLEEN_MMAR = REPO / "mmars" / "spleen_ct_seg"
REFERENCE = REPO.parent / "shared" / "reference" / "clara-train-examples"

# Small enough for 2 CPU cores: 32^3 volumes, 16^3 crops, no loader workers.
TINY = {"roi_size": [16, 16, 16], "num_workers": 0, "epochs": 1, "num_interval_per_valid": 1}


def tiny_set(**extra: object) -> list[str]:
    """``--set`` arguments for a fast run, JSON-encoding lists."""
    values = {**TINY, **extra}
    return [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory):
    from clara_fl.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), cases=8, sites=2, shape=(32, 32, 32), seed=0)


def copy_mmar(source: Path, destination: Path, data_root: Path, **environment: object) -> Path:
    """Copy an MMAR's config/, commands/, docs/ and point its environment.json at ``data_root``."""
    destination.mkdir(parents=True, exist_ok=True)
    for folder in ("config", "commands", "docs", "custom"):
        if (source / folder).is_dir():
            shutil.copytree(source / folder, destination / folder)
    env_file = destination / "config" / "environment.json"
    env = json.loads(env_file.read_text())
    env.update({"DATA_ROOT": str(data_root), "DATASET_JSON": str(data_root / "dataset.json"), **environment})
    env_file.write_text(json.dumps(env, indent=2))
    return destination


@pytest.fixture
def spleen_mmar(tmp_path: Path, synthetic_data) -> Path:
    return copy_mmar(SPLEEN_MMAR, tmp_path / "spleen_ct_seg", synthetic_data.root)


@pytest.fixture(scope="session")
def trained_spleen(tmp_path_factory: pytest.TempPathFactory, synthetic_data) -> Path:
    """A spleen MMAR trained for one epoch, shared read-only by validation/export tests."""
    from clara_fl.cli import main

    mmar = copy_mmar(SPLEEN_MMAR, tmp_path_factory.mktemp("trained") / "spleen_ct_seg", synthetic_data.root)
    assert main(["train", "-m", str(mmar), "--write_train_stats", "--set", *tiny_set()]) == 0
    return mmar


def site_ctx(app_dir: Path, workspace: Path, name: str = "site-1"):
    """The few FLContext methods a Learner uses, backed by a real FLContext."""
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext

    workspace_obj = SimpleNamespace(get_app_dir=lambda job_id: str(app_dir), get_root_dir=lambda: str(workspace))
    ctx = FLContext()
    engine = SimpleNamespace(get_workspace=lambda: workspace_obj, fire_event=lambda *args, **kwargs: None)
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, "job", private=True, sticky=False)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, name, private=True, sticky=False)
    return ctx


@pytest.fixture
def fl_site(tmp_path: Path, synthetic_data):
    """A site workspace whose app folder is the spleen MMAR and whose local/ names the data."""
    workspace = tmp_path / "site-1"
    app = copy_mmar(SPLEEN_MMAR, workspace / "job" / "app_site-1", synthetic_data.root)
    (workspace / "local").mkdir(parents=True)
    (workspace / "local" / "clara_fl_site.json").write_text(
        json.dumps({"environment": {"DATA_ROOT": str(synthetic_data.root)}})
    )
    return app, workspace


@pytest.fixture(autouse=True)
def sites_run_in_this_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Unit tests drive the Learner and the Validator with the site's tasks in the test's process
    (``InProcessSite``), so they can look inside the trainer; tests marked ``site_process`` and the
    end-to-end runs use the real confined process."""
    if request.node.get_closest_marker("e2e") or request.node.get_closest_marker("site_process"):
        yield
        return
    from clara_fl.fl.site import learner
    from clara_fl.fl.site.site_process import InProcessSite

    sites: dict[str, InProcessSite] = {}
    monkeypatch.setattr(learner, "site_backend", lambda spec: sites.setdefault(spec.app_dir, InProcessSite()))
    yield
    for site in sites.values():
        site.stop()


def local_training(learner: object):
    """The site's trainer behind a Learner whose tasks run in this process (``sites_run_in_this_process``)."""
    training = learner.backend.service.training  # type: ignore[attr-defined]
    assert training is not None, "the learner did not build its trainer"
    return training


# -- test tiers -------------------------------------------------------------------------------------------
# Every test that is not ``e2e`` is either ``unit`` (``make test-unit``: under 2 minutes on 2 cores) or
# ``integration`` (``make test-integration``); ``make test`` runs both. A test is integration when its module
# is in INTEGRATION_MODULES, when it is marked ``site_process`` (it starts the real confined site process) or
# ``integration``, or when its function is listed in INTEGRATION_TESTS (all its parametrizations): the tests
# that train the spleen MMAR beyond a step or two, run torchrun, a bundle or the CLI in subprocesses, or start a
# confined child. Everything else is unit, so a new test is unit until it is listed here; ``make test-unit``
# names the unit tests slower than UNIT_SLOW_S at its end.
INTEGRATION_MODULES = {"test_ddp.py", "test_reference_configs.py", "test_site_process.py"}
INTEGRATION_TESTS = {
    "test_abort.py": {"test_a_run_that_ends_normally_is_left_to_flare"},
    "test_bundle_export.py": {
        "test_an_mmar_without_inference_config_gets_one_derived_from_validation_that_writes_a_mask_per_image",
        "test_bundle_evaluation_gives_clara_fl_key_metric_on_the_same_model",
        "test_bundle_inference_writes_a_mask_per_test_case",
        "test_bundle_training_repeats_clara_fl_train_loss_curve_and_weights",
        "test_byoc_code_goes_to_scripts_and_the_bundle_trains_as_clara_fl_does",
        "test_byoc_network_exports_to_torchscript_from_outside_the_bundle_folder",
        "test_ckpt_export_turns_the_bundle_weights_into_torchscript",
        "test_the_classification_mmar_bundle_trains_evaluates_infers_and_exports_with_monai_alone",
    },
    "test_clara40.py": {"test_a_clara40_custom_handler_sees_batched_engine_output_as_monai_05_gave_it"},
    "test_classification_mmar.py": {"test_the_classification_mmar_trains_validates_and_infers"},
    "test_cli_workflows.py": {
        "test_export_writes_torchscript_that_reproduces_the_checkpoint",
        "test_finetune_starts_from_the_trained_checkpoint",
        "test_infer_writes_one_segmentation_nifti_per_test_image",
        "test_validate_writes_metrics_csv_raw_and_summary",
        "test_validation_from_torchscript_and_from_checkpoint_give_the_same_dice",
    },
    "test_code_policy.py": {
        "test_a_component_outside_the_allowed_libraries_is_refused",
        "test_a_hostile_lambda_that_would_run_during_training_is_refused_before_training",
        "test_safe_training_of_the_shipped_mmar_still_runs",
        "test_the_reported_escape_is_refused_with_safe_and_runs_nothing",
    },
    "test_config_fuzz.py": {
        "test_a_mutated_clara40_config_passes_or_fails_with_a_located_config_error",
        "test_a_mutated_config_passes_or_fails_with_a_located_config_error",
    },
    "test_convert.py": {"test_the_converted_mmar_trains_to_the_same_weights_as_the_original"},
    "test_failure_locator.py": {"test_a_transform_failing_in_a_loader_worker_is_named_by_config_path_and_case"},
    "test_failure_lines.py": {
        "test_a_case_failing_in_a_sites_training_is_one_line_in_the_sites_log",
        "test_a_case_failing_in_training_is_one_line_with_no_traceback_without_debug",
        "test_a_case_failing_while_a_cache_dataset_caches_in_threads_names_the_transform_and_the_case",
        "test_with_debug_the_libraries_and_clara_fl_show_their_tracebacks",
    },
    "test_fl_algorithm_sites_14a.py": {
        "test_a_fedbn_site_neither_sends_nor_loads_its_norm_layers",
        "test_a_scaffold_round_returns_the_control_change_and_keeps_the_local_control",
        "test_cross_site_validation_uses_the_sites_own_norm_layers",
        "test_fedbn_training_in_several_processes_keeps_the_sites_norm_layers",
    },
    "test_fl_learner.py": {
        "test_a_rebuilt_learner_resumes_the_local_state_from_disk",
        "test_abort_stops_training_after_the_current_iteration_and_the_next_round_starts_a_fresh_epoch",
        "test_clara_fl_site_config_variable_wins_over_the_local_site_file",
        "test_learner_executor_puts_the_before_train_metrics_dict_into_the_train_result",
        "test_steps_aggregation_runs_exactly_that_many_iterations",
        "test_submit_model_sends_the_best_local_checkpoint_after_a_round",
        "test_train_sends_full_weights_when_send_weight_diff_is_false",
        "test_train_sends_the_weight_diff_and_the_real_number_of_iterations",
        "test_validator_scores_a_model_by_its_owner_from_header_or_meta",
        "test_validator_without_a_cross_validation_config_derives_one",
    },
    "test_landlock.py": {"test_a_confined_two_process_gloo_all_reduce_works_with_ddp"},
    "test_newcomer.py": {
        "test_the_set_that_the_hint_names_validates_final_model_pt",
        "test_train_says_that_no_validation_ran_and_which_file_holds_the_weights",
    },
    "test_numpy_era_transforms.py": {
        "test_a_clara41_mmar_with_a_numpy_era_custom_transform_trains_and_validates_unchanged"
    },
    "test_recipes.py": {"test_example_job_py_exports_a_job_for_nvflare_job_submit"},
    "test_reliability.py": {
        "test_kill_9_at_random_moments_leaves_only_loadable_files_and_resume_reaches_the_epochs",
        "test_safe_standalone_refuses_imports_with_the_config_path_and_runs_nothing",
    },
    "test_resume.py": {"test_kill_9_after_an_epoch_then_resume_continues_from_the_last_finished_epoch_to_the_end"},
    "test_run_failures.py": {"test_a_handler_failing_names_its_config_path_and_class"},
    "test_runtime_startup.py": {"test_the_program_exits_quickly_with_every_tensorboard_scalar_and_checkpoint_on_disk"},
    "test_server_network_build.py": {
        "test_a_failed_build_is_one_line_naming_the_config_item",
        "test_a_payload_that_writes_a_file_from_python_is_refused_under_the_full_code_policy",
        "test_a_shell_payload_in_train_model_args_leaves_no_file_even_under_the_full_code_policy",
        "test_the_persistor_gives_flare_the_built_networks_weights_and_class_name",
        "test_the_server_log_says_the_build_ran_confined",
        "test_the_spleen_network_built_in_the_child_equals_the_one_built_in_process",
    },
}
UNIT_SLOW_S = 2.0


def is_integration(item: pytest.Item) -> bool:
    module = item.path.name
    name = getattr(item, "originalname", item.name)
    return (
        module in INTEGRATION_MODULES
        or name in INTEGRATION_TESTS.get(module, ())
        or item.get_closest_marker("site_process") is not None
        or item.get_closest_marker("integration") is not None
    )


# Fixtures that run a simulation or a deployment once for several tests: under pytest-xdist (``make test`` and
# the e2e targets run ``-n 2 --dist loadgroup``) the tests that share one run on one worker, so it runs once.
SHARED_RUNS = {"fedavg_simulation": "session", "deployment": "module"}  # fixture: its scope


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks every test that is not e2e ``integration`` or ``unit`` (see INTEGRATION_TESTS), and groups the tests
    that share a run (SHARED_RUNS) for pytest-xdist."""
    for item in items:
        for name, scope in SHARED_RUNS.items():
            if name in getattr(item, "fixturenames", ()):
                group = name if scope == "session" else f"{name}@{item.nodeid.split('::')[0]}"
                item.add_marker(pytest.mark.xdist_group(group))
        if item.get_closest_marker("e2e"):
            continue
        item.add_marker(pytest.mark.integration if is_integration(item) else pytest.mark.unit)


# The POC deployments spend most of their minutes waiting (FLARE's heartbeats, process starts) and the simulations
# most of theirs on the CPU. pytest-xdist hands tests out in collection order (a group of tests sharing a run
# first), so spreading the deployments through the order keeps about one worker waiting on a deployment while the
# others train, instead of three simulations fighting over 2 cores and then the deployments queuing at the end.
DEPLOYMENT_MODULE_PREFIX = "test_poc_"
TESTS_BETWEEN_DEPLOYMENTS = 4


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")  # after -m deselects
def pytest_collection_modifyitems_for_workers(items: list[pytest.Item]) -> None:
    items[:] = interleave_deployments(items)


def interleave_deployments(items: list[pytest.Item]) -> list[pytest.Item]:
    """``items`` with the POC deployment tests spread out, one after every TESTS_BETWEEN_DEPLOYMENTS others,
    starting with a deployment; every other test keeps its relative order."""
    deployments = [i for i in items if i.path.name.startswith(DEPLOYMENT_MODULE_PREFIX)]
    if not deployments or len(deployments) == len(items):
        return items
    others = [i for i in items if not i.path.name.startswith(DEPLOYMENT_MODULE_PREFIX)]
    ordered: list[pytest.Item] = []
    while deployments or others:
        if deployments:
            ordered.append(deployments.pop(0))
        ordered += others[:TESTS_BETWEEN_DEPLOYMENTS]
        del others[:TESTS_BETWEEN_DEPLOYMENTS]
    return ordered


# An end-to-end test that runs past this is stopped and fails, naming itself, rather than waiting on FLARE's own
# timeouts (a simulated site whose worker never came up leaves cross-site evaluation waiting 600 s for its model,
# then up to 6000 s for its validations) until CI's hard limit ends the whole run without a word.
E2E_TEST_LIMIT_S = int(os.environ.get("CLARA_FL_E2E_TEST_LIMIT_S", "1500"))


class E2ETestOverTime(BaseException):
    """Raised in an e2e test that ran past E2E_TEST_LIMIT_S (a BaseException: no ``except Exception`` of the code
    under test swallows it)."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    if item.get_closest_marker("e2e") is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def over_time(signum: int, frame: object) -> None:
        raise E2ETestOverTime(f"{item.nodeid} ran over {E2E_TEST_LIMIT_S} s (CLARA_FL_E2E_TEST_LIMIT_S)")

    previous = signal.signal(signal.SIGALRM, over_time)
    signal.alarm(E2E_TEST_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


_unit_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "unit" in report.keywords:
        _unit_seconds[report.nodeid] = _unit_seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Unit tests slower than UNIT_SLOW_S (set-up included): list them in INTEGRATION_TESTS to keep the unit tier
    under 2 minutes. Only said when the run selected the unit tier (``-m unit``)."""
    if "unit" not in (config.getoption("markexpr", "") or ""):
        return
    slow = sorted(((s, n) for n, s in _unit_seconds.items() if s > UNIT_SLOW_S), reverse=True)
    if slow:
        terminalreporter.section(f"unit tests slower than {UNIT_SLOW_S:.0f} s (move to INTEGRATION_TESTS?)")
        for seconds, nodeid in slow:
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}")


def pytest_configure(config: pytest.Config) -> None:
    """One torch (OpenMP) thread per process unless the caller says otherwise, set before anything imports torch.
    The tests' trainings are tiny and share 2 cores with the simulators, torchrun workers and confined processes
    they start (which inherit it): two spinning OpenMP threads per process made a loaded machine 3-10x slower."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def fedavg_simulation(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``clara-fl simulate`` of a 3-round 2-site FedAvg of the spleen MMAR, 3 local epochs, with cross-site
    validation (the shape ``clara-fl demo`` runs), run once for the e2e tests that only read a finished simulation
    (test_fl_simulation.py, test_newcomer.py, test_report.py): ``job``, ``workspace``, ``site_file`` and what the
    command ``printed``. The data and job settings are test_fl_simulation's."""
    import io
    from contextlib import redirect_stdout

    from clara_fl.cli import main
    from clara_fl.data.synthetic import make_synthetic_dataset
    from clara_fl.recipes.job_folder import create_job
    from tests.test_fl_simulation import JOB_SETTINGS

    tmp = tmp_path_factory.mktemp("fedavg_simulation")
    data = make_synthetic_dataset(tmp / "data", cases=12, sites=2, shape=(32, 32, 32))
    site_file = tmp / "clara_fl_site.json"
    environment = {"DATA_ROOT": str(data.root), "DATASET_JSON": str(data.root / "dataset_{SITE_NAME}.json")}
    site_file.write_text(json.dumps({"environment": environment}))
    settings = {"num_rounds": 3, "local_epochs": 3, "min_clients": 2, "overrides": JOB_SETTINGS}
    job = create_job(SPLEEN_MMAR, tmp / "job", **settings)  # the default template
    workspace = tmp / "ws"
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(["simulate", str(job), "-w", str(workspace), "-n", "2", "-t", "2", "--site-config", str(site_file)])
    assert code == 0, (workspace / "simulator_output.txt").read_text()[-3000:]
    return SimpleNamespace(job=job, workspace=workspace, site_file=site_file, printed=printed.getvalue())
