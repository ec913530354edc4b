"""ClaraFedAvgRecipe: FLARE 2.9 Job Recipes over an MMAR, the shipped job templates kept in step with them."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REFERENCE, REPO, SPLEEN_MMAR

PERCENTILE = {
    "path": "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy",
    "args": {"percentile": 10, "gamma": 0.01},
}
TINY_JOB = {"roi_size": [16, 16, 16], "num_workers": 0, "num_interval_per_valid": 1, "learning_rate": 0.001}


def read_template(template: str, name: str) -> dict[str, Any]:
    from pyhocon import ConfigFactory, HOCONConverter

    return json.loads(HOCONConverter.to_json(ConfigFactory.parse_file(str(REPO / "job_templates" / template / name))))


def entries(config: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every component, workflow, executor and filter of an app config: path and args by a stable key."""
    found = {}
    for key in ("workflows", "components"):
        found.update({c["id"]: (c["path"], c.get("args", {})) for c in config.get(key, [])})
    for e in config.get("executors", []):
        found[f"executor:{','.join(e['tasks'])}"] = (e["executor"]["path"], e["executor"].get("args", {}))
    for key in ("task_data_filters", "task_result_filters"):
        for group in config.get(key, []):
            for f in group["filters"]:
                found[f"{key}:{','.join(group['tasks'])}:{f['path']}"] = (f["path"], f.get("args", {}))
    return found


def set_template_args(config: dict[str, Any], component_id: str, **values: Any) -> None:
    for key in ("workflows", "components"):
        for c in config.get(key, []):
            if c["id"] == component_id:
                c.setdefault("args", {}).update(values)


def exported(tmp_path: Path, recipe: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    recipe.export(str(tmp_path / "export"))
    job = tmp_path / "export" / recipe.name
    config = job / "app" / "config"
    return (
        json.loads((config / "config_fed_server.json").read_text()),
        json.loads((config / "config_fed_client.json").read_text()),
        json.loads((job / "meta.json").read_text()),
    )


def component_class(path: str) -> type:
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def constructor_defaults(path: str) -> dict[str, Any]:
    """The defaults of a FLARE component class's constructor arguments (its bases' too, as FedJob reads them)."""
    import inspect

    defaults: dict[str, Any] = {}
    for cls in reversed(component_class(path).__mro__):
        if "__init__" in vars(cls):
            for parameter in inspect.signature(vars(cls)["__init__"]).parameters.values():
                if parameter.default is not inspect.Parameter.empty:
                    defaults[parameter.name] = parameter.default
    return defaults


def plain(value: Any) -> Any:
    """A held argument as FedJob writes it: an enum member by its value, a tuple as a list, other objects by repr."""
    from enum import Enum

    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value if isinstance(value, (type(None), bool, int, float, str)) else repr(value)


def constructor_calls(config: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every component of an app config as the object it builds: the class (FedJob names it by the module that
    defines it, a template may name a module that re-exports it) and the constructor's arguments as the object
    holds them (FedJob's view: those left out at their defaults, and defaults the constructor fills in, count)."""
    from nvflare.fuel.utils.class_utils import get_component_init_parameters

    calls = {}
    flare_log = logging.getLogger("nvflare")
    level = flare_log.level
    flare_log.setLevel(logging.WARNING)
    try:
        for key, (path, args) in entries(config).items():
            cls = component_class(path)
            built = cls(**args)
            attributes = vars(built)
            held = {
                name: plain(attributes[name if name in attributes else f"_{name}"])
                for name in get_component_init_parameters(built)
                if name in attributes or f"_{name}" in attributes
            }
            calls[key.replace(path, cls.__name__)] = (f"{cls.__module__}.{cls.__qualname__}", held)
    finally:
        flare_log.setLevel(level)
    return calls


def assert_same_job(rendered: Path, exported_job: Path) -> None:
    """Two job folders hold the same files and meta, and their FLARE configs the same components built with the
    same arguments: FedJob leaves out arguments equal to the constructor's defaults."""
    files = sorted(str(p.relative_to(rendered)) for p in rendered.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(exported_job)) for p in exported_job.rglob("*") if p.is_file())
    for name in files:
        want, have = (job / name for job in (rendered, exported_job))
        if name.endswith(("config_fed_server.json", "config_fed_client.json")):
            rendered_config, exported_config = json.loads(want.read_text()), json.loads(have.read_text())
            assert constructor_calls(rendered_config) == constructor_calls(exported_config), name
            assert rendered_config.get("server") == exported_config.get("server"), name
        elif name.endswith(".json"):
            assert json.loads(want.read_text()) == json.loads(have.read_text()), name
        else:
            assert want.read_bytes() == have.read_bytes(), name


SAME_JOB_CASES = {
    **{name: {"algorithm": name} for name in ("fedavg", "fedprox", "fedopt", "scaffold", "ditto", "fedbn")},
    "fedopt_scheduled": {"algorithm": "fedopt", "algorithm_args": {"optimizer": "adam", "lr_scheduler": True}},
    "scatter_and_gather": {"template": "clara_fedavg_cse"},
    "he": {"he": True},
    "privacy": {"privacy_filters": [PERCENTILE]},
}


@pytest.mark.parametrize("case", sorted(SAME_JOB_CASES))
def test_job_create_and_the_recipe_write_the_same_job_folder(tmp_path: Path, case: str) -> None:
    from clara_fl.recipes import ClaraFedAvgRecipe
    from clara_fl.recipes.job_folder import create_job

    if case == "he":
        pytest.importorskip("tenseal")
    settings = {"num_rounds": 4, "min_clients": 3, "local_epochs": 2, "overrides": {"num_workers": 0}}
    settings.update(SAME_JOB_CASES[case])
    ClaraFedAvgRecipe(SPLEEN_MMAR, name="job", **settings).export(str(tmp_path / "export"))

    rendered = create_job(SPLEEN_MMAR, tmp_path / "job", **settings)

    assert_same_job(rendered, tmp_path / "export" / "job")


@pytest.mark.parametrize(
    ("settings", "template", "why"),
    [
        ({}, "clara_fedavg_cse_mc", None),
        ({"algorithm": "scaffold"}, "clara_fedavg_cse_mc", None),
        ({"algorithm": "fedopt"}, "clara_fedavg_cse", "fedopt's server part runs on FLARE's ScatterAndGather"),
        (
            {"he": True},
            "clara_fedavg_cse",
            "--he runs on FLARE's ScatterAndGather HE aggregator and shareable generator",
        ),
        (
            {"aggregation_weights": {"site-1": 2.0}},
            "clara_fedavg_cse",
            "the job sets the ScatterAndGather aggregator's aggregation_weights",
        ),
    ],
    ids=["fedavg", "scaffold", "fedopt", "he", "aggregation_weights"],
)
def test_a_job_without_a_named_template_runs_on_the_template_its_algorithm_and_options_need(
    settings: dict[str, Any], template: str, why: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    from clara_fl.recipes.app_configs import FedAvgSettings, choose_template

    caplog.set_level(logging.INFO, logger="clara_fl.recipes.app_configs")

    chosen = choose_template(FedAvgSettings(**settings))

    assert chosen == template
    assert [r.getMessage() for r in caplog.records] == ([f"job template clara_fedavg_cse: {why}"] if why else [])


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"algorithm": "fedopt"}, "fedopt needs a template with ScatterAndGather"),
        ({"algorithm": "scaffold", "template": "clara_fedavg_cse"}, "use --template clara_fedavg_cse_mc"),
    ],
    ids=["fedopt_on_model_controller", "scaffold_on_scatter_and_gather"],
)
def test_a_named_template_that_cannot_run_the_algorithm_is_refused_in_one_line(
    tmp_path: Path, settings: dict[str, Any], expected: str
) -> None:
    from clara_fl.config.errors import UsageError
    from clara_fl.recipes.job_folder import create_job

    named = {"template": "clara_fedavg_cse_mc", **settings}

    with pytest.raises(UsageError) as raised:
        create_job(SPLEEN_MMAR, tmp_path / "job", **named)

    assert raised.value.option == "--template" and expected in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "job").exists()


def test_job_create_and_the_recipe_write_the_same_job_for_an_mmar_with_clara_40_he_fl_configs(tmp_path: Path) -> None:
    from clara_fl.recipes import ClaraFedAvgRecipe
    from clara_fl.recipes.job_folder import create_job
    from tests.test_clara_fl_configs import CLARA_40_HE_CLIENT, CLARA_40_HE_SERVER, mmar_with

    pytest.importorskip("tenseal")
    mmar = mmar_with(tmp_path, CLARA_40_HE_SERVER, CLARA_40_HE_CLIENT)
    ClaraFedAvgRecipe(mmar, name="job").export(str(tmp_path / "export"))

    rendered = create_job(mmar, tmp_path / "job")

    assert_same_job(rendered, tmp_path / "export" / "job")


def test_job_create_imports_neither_flare_nor_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from clara_fl.cli import main; "
        f"main(['job', 'create', '-m', {str(SPLEEN_MMAR)!r}, '-o', {str(tmp_path / 'job')!r}]); "
        "print(sorted(m for m in ('torch', 'nvflare', 'monai', 'ignite', 'numpy') if m in sys.modules))"
    )

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)

    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "job" / "meta.json").is_file()


def test_recipe_without_cross_site_eval_has_no_validation_workflow_or_executor(tmp_path: Path) -> None:
    from clara_fl.recipes import ClaraFedAvgRecipe

    server, client, _ = exported(tmp_path, ClaraFedAvgRecipe(SPLEEN_MMAR, cross_site_eval=False))

    assert [w["id"] for w in server["workflows"]] == ["fedavg"]  # the default template's rounds, no cross-site eval
    assert {c["id"] for c in server["components"]}.isdisjoint({"model_locator", "json_generator"})
    [learner] = client["executors"]
    assert "train" in learner["tasks"] and "validate" not in learner["tasks"]


def test_recipe_privacy_filters_filter_what_sites_send(tmp_path: Path) -> None:
    from clara_fl.recipes import ClaraFedAvgRecipe

    _, client, _ = exported(tmp_path, ClaraFedAvgRecipe(SPLEEN_MMAR, privacy_filters=[PERCENTILE]))

    [group] = client["task_result_filters"]
    [privacy] = group["filters"]
    assert group["tasks"] == ["train"] and privacy["path"] == PERCENTILE["path"]
    given = {**constructor_defaults(PERCENTILE["path"]), **privacy["args"]}
    assert {k: given[k] for k in PERCENTILE["args"]} == PERCENTILE["args"]


def test_recipe_app_is_the_mmar_with_overrides_in_its_environment(tmp_path: Path) -> None:
    from clara_fl.recipes import ClaraFedAvgRecipe

    recipe = ClaraFedAvgRecipe(SPLEEN_MMAR, name="spleen", overrides={"num_workers": 0}, nproc_per_site=2)
    recipe.export(str(tmp_path))

    app = tmp_path / "spleen" / "app"
    assert sorted(p.name for p in app.iterdir()) == ["config", "docs"]
    environment = json.loads((app / "config" / "environment.json").read_text())
    mmar_environment = json.loads((SPLEEN_MMAR / "config" / "environment.json").read_text())
    assert environment == {**mmar_environment, "num_workers": 0, "multi_gpu": True}
    learner = next(
        c
        for c in json.loads((app / "config" / "config_fed_client.json").read_text())["components"]
        if c["id"] == "clara_learner"
    )
    assert learner["args"]["nproc_per_site"] == 2


def test_recipe_refuses_a_folder_that_is_not_an_mmar(tmp_path: Path) -> None:
    from clara_fl.config.errors import ConfigError
    from clara_fl.recipes import ClaraFedAvgRecipe

    with pytest.raises(ConfigError, match="not an MMAR"):
        ClaraFedAvgRecipe(tmp_path)


def test_shipped_files_are_found_through_the_package() -> None:
    from clara_fl.resources import examples_dir, mmar_path, shipped_mmars, templates_dir

    assert mmar_path("spleen_ct_seg").resolve() == SPLEEN_MMAR.resolve()
    assert {"clara_fedavg_cse", "clara_fedavg_cse_mc"} <= {p.name for p in templates_dir().iterdir()}
    for name in shipped_mmars():
        assert (examples_dir() / name / "job.py").is_file(), f"no recipe example for the shipped MMAR {name}"


def test_example_job_py_exports_a_job_for_nvflare_job_submit(tmp_path: Path) -> None:
    example = REPO / "examples" / "spleen_ct_seg" / "job.py"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    done = subprocess.run(
        [sys.executable, str(example), "--export", "--export-dir", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "spleen_ct_seg" / "app" / "config" / "config_train.json").is_file()
    assert (tmp_path / "spleen_ct_seg" / "meta.json").is_file()


@pytest.mark.skipif(not (REFERENCE / "FL").is_dir(), reason="reference Clara FL configs not here")
@pytest.mark.e2e
def test_recipe_from_an_mmar_with_clara_fl_configs_trains_in_sim_env_with_cross_site_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nvflare.recipe import SimEnv

    from clara_fl.data.synthetic import make_synthetic_dataset
    from clara_fl.fl.jobs.results import find_cross_site_results, load_cross_site_results
    from clara_fl.fl.site.context import SITE_CONFIG_ENV
    from clara_fl.recipes import ClaraFedAvgRecipe

    data = make_synthetic_dataset(tmp_path / "data", cases=8, sites=2, shape=(32, 32, 32))
    site_file = tmp_path / "site.json"
    site_file.write_text(
        json.dumps(
            {"environment": {"DATA_ROOT": str(data.root), "DATASET_JSON": str(data.root / "dataset_{SITE_NAME}.json")}}
        )
    )
    monkeypatch.setenv(SITE_CONFIG_ENV, str(site_file))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mmar = tmp_path / "mmar"  # the reference server config and its privacy (PercentilePrivacy) client config
    shutil.copytree(SPLEEN_MMAR, mmar)
    shutil.copy(REFERENCE / "FL/adminMMAR/config/config_fed_server.json", mmar / "config" / "config_fed_server.json")
    shutil.copy(
        REFERENCE / "FL/adminMMAR_privacy/config/config_fed_client_w_PercentileProtocol.json",
        mmar / "config" / "config_fed_client.json",
    )
    recipe = ClaraFedAvgRecipe(mmar, name="spleen_sim", num_rounds=1, local_epochs=1, overrides=TINY_JOB)
    assert recipe.settings.result_filters and recipe.settings.min_clients == 2

    run = recipe.run(SimEnv(num_clients=2, workspace_root=str(tmp_path / "sim")))

    results = find_cross_site_results(run.get_result())
    assert results is not None
    table = load_cross_site_results(results)
    assert {"site-1", "site-2"} <= set(table)


def test_recipe_exported_for_a_poc_env_is_byoc_so_fresh_poc_sites_build_it(tmp_path: Path) -> None:
    from nvflare.recipe import PocEnv

    from clara_fl.recipes import ClaraFedAvgRecipe

    recipe = ClaraFedAvgRecipe(SPLEEN_MMAR, name="spleen")
    recipe.export(str(tmp_path / "plain"))
    recipe.export(str(tmp_path / "poc"), env=PocEnv(num_clients=2))

    assert not (tmp_path / "plain" / "spleen" / "app" / "custom").exists()
    custom = tmp_path / "poc" / "spleen" / "app" / "custom"
    assert [p.name for p in custom.iterdir()] == ["README.md"]
