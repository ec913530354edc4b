"""The restricted policy: what a job's config may run, build, read and write at a site (and with --safe)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from clara_fl.cli import main
from clara_fl.config.errors import ConfigError
from clara_fl.config.expressions import RestrictedEvaluator
from clara_fl.config.resolver import BuildContext, ConfigResolver
from clara_fl.config.restrictions import Restrictions
from clara_fl.config.specs import parse_component
from tests.conftest import REFERENCE, SPLEEN_MMAR, site_ctx, tiny_set

REPO = Path(__file__).resolve().parents[1]
ISSUE_EXAMPLE = "#sorted(['touch {marker}'], key=[lambda torch: 0, torch][1].os.system)"


def set_loss_argument(mmar: Path, name: str, value: object) -> None:
    path = mmar / "config" / "config_train.json"
    config = json.loads(path.read_text())
    config["train"]["loss"]["args"][name] = value
    path.write_text(json.dumps(config))


def set_component(mmar: Path, key: str, component: dict) -> None:
    path = mmar / "config" / "config_train.json"
    config = json.loads(path.read_text())
    config["train"][key] = component
    path.write_text(json.dumps(config))


# -- config code -------------------------------------------------------------------------------------


def test_the_reported_escape_is_refused_with_safe_and_runs_nothing(spleen_mmar: Path, tmp_path: Path, capfd) -> None:
    marker = tmp_path / "owned"
    set_loss_argument(spleen_mmar, "reduction", ISSUE_EXAMPLE.format(marker=marker))

    code = main(["train", "-m", str(spleen_mmar), "--safe", "--set", *tiny_set()])

    assert code == 2
    error = capfd.readouterr().err
    assert "config/config_train.json: train.loss.args.reduction: code refused by the site's restricted policy" in error
    assert not marker.exists() and not (spleen_mmar / "models").exists()


def test_a_hostile_lambda_that_would_run_during_training_is_refused_before_training(
    spleen_mmar: Path, tmp_path: Path, capfd
) -> None:
    marker = tmp_path / "owned"
    path = spleen_mmar / "config" / "config_train.json"
    config = json.loads(path.read_text())
    config["validate"]["handlers"][0]["args"]["output_transform"] = (
        f"lambda x: x.__class__.__init__.__globals__['os'].system('touch {marker}')"
    )
    path.write_text(json.dumps(config))

    assert main(["train", "-m", str(spleen_mmar), "--safe", "--set", *tiny_set()]) == 2

    assert "validate.handlers[0].args.output_transform: code refused" in capfd.readouterr().err
    assert not marker.exists()


# Each is refused by the static check, before anything is evaluated.
STATIC_ESCAPES = [
    # scoping: a lambda parameter named like a module, used outside the lambda
    "#sorted(['id'], key=[lambda torch: 0, torch][1].os.system)",
    "#[lambda os: 0, os][1]",
    # default arguments carrying callables
    "lambda x, f=print: f(x)",
    "lambda x, *rest: rest",
    # immediately called lambdas
    "#(lambda x: x)(1)",
    "#(lambda: 0)()",
    # callbacks passed by keyword
    "#max([1], key=print)",
    "#sorted([1], key=len)",
    # str.format and %-style traversal
    "#'{0.__class__.__base__}'.format(1)",
    "lambda x: '{0.__globals__}'.format(x)",
    # dunder attribute chains from components and data
    "#@model.__class__.__init__.__globals__",
    "#@model.forward.__globals__['os']",
    "lambda x: x.__class__.__mro__",
    "#().__class__.__base__.__subclasses__()",
    # modules reached through allowed roots
    "#torch.os.system('id')",
    "#monai.bundle.ConfigParser",
    "#numpy.load('x.npy', allow_pickle=True)",
    "#torch.load('x.pt')",
    "#torch.hub.load('x', 'y')",
    # builtins that reflect or execute
    "#__import__('os').system('id')",
    "#getattr(@model, 'forward')",
    "#eval('1+1')",
    "#open('/etc/passwd').read()",
    "#vars(@model)",
    "#type(@model)",
    # comprehension variables and walrus
    "#[c for c in ().__class__.__base__.__subclasses__()]",
    "#[x for x in [1]]",
    "#{k: v for k, v in {}.items()}",
    "#(os := 1)",
    # f-strings, unpacking
    "#f'{1}'",
    "#{**{}}",
    "#print(*[1])",
    # methods that write or load
    "lambda x: x.tofile('/tmp/leak')",
    "#@model.load_state_dict({})",
    "#@model.apply(print)",
    "#@model.register_forward_hook(print)",
    "#@model.state_dict()",
    "#@model.to('cpu')",
    # a helper used as a callable value inside a bigger expression
    "#[monai.handlers.from_engine(['a'])][0]",
    "#min([monai.handlers.from_engine(['a'])])",
]


@pytest.mark.parametrize("code", STATIC_ESCAPES)
def test_an_escape_is_refused_before_anything_runs(code: str) -> None:
    with pytest.raises(ConfigError, match="restricted policy"):
        RestrictedEvaluator().check(code)


# Forms that parse but are refused by the value they would produce or use, still before any call escapes.
VALUE_ESCAPES = [
    "#@model.forward",  # a bound method as a value
    "#@model.weight.grad_fn",  # not plain data
    "lambda x: x['callback']",  # a function inside data
    "#'a' * 10 ** 9",
    "#9 ** 9 ** 9",
    "#'%(a)s' % @data",
    "#@data.get('callback')",
]


@pytest.mark.parametrize("code", VALUE_ESCAPES)
def test_a_value_that_is_not_data_is_refused_while_evaluating(code: str) -> None:
    components = {"model": torch.nn.Linear(2, 1), "data": {"callback": print, "a": 1}}
    value = None
    with pytest.raises(ConfigError, match="restricted policy"):
        value = RestrictedEvaluator().evaluate(code, components.__getitem__)
        if callable(value):
            value({"callback": print})


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("#@model.out_features * 10", 10),
        ("#0.001 * 10", 0.01),
        ("#len(list(@model.parameters()))", 2),
        ("#torch.float16", torch.float16),
        ("#[1, 2][-1]", 2),
        ("#{'a': (1, 2)}['a'][0]", 1),
    ],
)
def test_the_forms_real_configs_use_evaluate_without_eval(code: str, expected: object) -> None:
    model = torch.nn.Linear(2, 1)

    assert RestrictedEvaluator().evaluate(code, {"model": model}.__getitem__) == expected


def test_lambdas_and_helpers_of_real_configs_give_working_functions() -> None:
    evaluator = RestrictedEvaluator()
    output = [{"pred": torch.tensor([0.2, 0.8]), "label": torch.tensor([1]), "loss": torch.tensor(0.5)}]

    nothing_to_resolve: dict[str, object] = {}
    pair = evaluator.evaluate("lambda x: (x['pred'], x['label'])", nothing_to_resolve.__getitem__)
    loss = evaluator.evaluate("#monai.handlers.from_engine(['loss'], first=True)", nothing_to_resolve.__getitem__)
    nothing = evaluator.evaluate("lambda x: None", nothing_to_resolve.__getitem__)

    assert pair(output[0])[1].item() == 1
    assert loss(output).item() == pytest.approx(0.5)
    assert nothing(output) is None


# -- classes a config may build ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "component",
    [
        {"path": "os.system", "args": {"command": "touch {marker}"}},
        {"path": "subprocess.Popen", "args": {"args": ["touch", "{marker}"]}},
        {"path": "builtins.exec", "args": {}},
        {"path": "torch.hub.load", "args": {"repo_or_dir": "x", "model": "y"}},
        {"path": "torch.load", "args": {"f": "{marker}"}},
        {"path": "monai.bundle.ConfigWorkflow", "args": {}},
        {"path": "monai.utils.optional_import", "args": {"module": "os"}},
        {"path": "numpy.load", "args": {"file": "{marker}"}},
        {"path": "clara_fl.runtime.files.write_json_atomic", "args": {}},
    ],
    ids=lambda c: c["path"],
)
def test_a_component_outside_the_allowed_libraries_is_refused(
    spleen_mmar: Path, tmp_path: Path, capfd, component: dict
) -> None:
    marker = tmp_path / "owned"
    component = json.loads(json.dumps(component).replace("{marker}", str(marker)))
    set_component(spleen_mmar, "loss", component)

    assert main(["train", "-m", str(spleen_mmar), "--safe", "--set", *tiny_set()]) == 2

    assert "train.loss.path: " in capfd.readouterr().err
    assert not marker.exists()


def test_a_module_outside_the_allowed_libraries_is_not_even_imported(tmp_path: Path) -> None:
    restrictions = Restrictions(str(tmp_path))

    with pytest.raises(ConfigError, match="none of them"):
        restrictions.check_module("antigravity")
    assert "antigravity" not in sys.modules


def test_byoc_classes_from_the_mmar_custom_folder_are_allowed(tmp_path: Path) -> None:
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "site_net_for_policy.py").write_text("import torch\nclass Net(torch.nn.Linear):\n    pass\n")
    sys.path.insert(0, str(tmp_path / "custom"))
    try:
        context = BuildContext(
            mmar_root=str(tmp_path), evaluator=RestrictedEvaluator(), restrictions=Restrictions(str(tmp_path))
        )
        config = {
            "train": {"model": {"path": "site_net_for_policy.Net", "args": {"in_features": 2, "out_features": 1}}}
        }

        built = ConfigResolver(config, context=context).get("model", "train")
    finally:
        sys.path.remove(str(tmp_path / "custom"))
    assert type(built).__name__ == "Net"


@pytest.mark.parametrize(
    ("transform", "key"),
    [
        (
            {"name": "LoadImaged", "args": {"keys": ["image"], "reader": "NumpyReader", "allow_pickle": True}},
            "allow_pickle",
        ),
        ({"name": "PersistentDataset", "args": {"data": [], "weights_only": False}}, "weights_only"),
    ],
)
def test_arguments_that_unpickle_are_refused(tmp_path: Path, transform: dict, key: str) -> None:
    context = BuildContext(
        mmar_root=str(tmp_path), evaluator=RestrictedEvaluator(), restrictions=Restrictions(str(tmp_path))
    )

    with pytest.raises(ConfigError, match=f"x.args.{key}: '{key}"):
        ConfigResolver({"x": transform}, context=context, dry_run=True).get("x")


# -- paths a job may write and read ----------------------------------------------------------------------


def fl_learner_error(app: Path, workspace: Path) -> str | None:
    from clara_fl.fl.site.learner import ClaraLearner

    learner = ClaraLearner(overrides=dict(roi_size=[16, 16, 16], num_workers=0))
    learner.initialize({}, site_ctx(app, workspace))
    failure = learner.init_failure
    return None if failure is None else failure.local_text()


def set_environment(app: Path, **values: object) -> None:
    path = app / "config" / "environment.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def test_a_job_checkpoint_folder_outside_the_job_is_refused_at_the_site(fl_site, tmp_path: Path) -> None:
    app, workspace = fl_site
    elsewhere = tmp_path / "elsewhere"
    set_environment(app, MMAR_CKPT_DIR=str(elsewhere))

    error = fl_learner_error(app, workspace)

    assert error is not None and "MMAR_CKPT_DIR: " in error and "outside this MMAR's folder" in error
    assert not elsewhere.exists()


def test_a_symlink_in_the_job_that_leads_outside_is_refused(fl_site, tmp_path: Path) -> None:
    app, workspace = fl_site
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (app / "out").symlink_to(elsewhere)
    set_environment(app, MMAR_EVAL_OUTPUT_PATH="out")

    error = fl_learner_error(app, workspace)

    assert error is not None and "MMAR_EVAL_OUTPUT_PATH: " in error
    assert list(elsewhere.iterdir()) == []


def test_a_saver_writing_through_dot_dot_is_refused(fl_site) -> None:
    app, workspace = fl_site
    path = app / "config" / "config_train.json"
    config = json.loads(path.read_text())
    config["validate"]["handlers"][-1]["args"]["save_dir"] = "{MMAR_CKPT_DIR}/../../../escaped"
    path.write_text(json.dumps(config))

    error = fl_learner_error(app, workspace)

    assert error is not None and "validate.handlers[2].args.save_dir: " in error
    assert not (workspace / "escaped").exists() and not (workspace.parent / "escaped").exists()


def test_a_relative_output_folder_is_resolved_like_the_library_does_and_refused(fl_site) -> None:
    app, workspace = fl_site
    path = app / "config" / "config_train.json"
    config = json.loads(path.read_text())
    config["train"]["handlers"][-1]["args"]["log_dir"] = "runs"  # the library writes it under the working directory
    path.write_text(json.dumps(config))

    error = fl_learner_error(app, workspace)

    assert error is not None and "train.handlers[5].args.log_dir: 'runs' is outside this MMAR's folder" in error


def test_a_job_reads_data_only_where_the_site_file_says(fl_site, tmp_path: Path, synthetic_data) -> None:
    import shutil

    app, workspace = fl_site
    other = tmp_path / "other_hospital_data"
    shutil.copytree(synthetic_data.root, other)
    path = app / "config" / "config_train.json"
    config = json.loads(path.read_text())
    config["train"]["dataset"]["data_list_file_path"] = str(other / "dataset.json")
    path.write_text(json.dumps(config))

    error = fl_learner_error(app, workspace)

    assert error is not None and "train.dataset.data_list_file_path: data location" in error


def test_job_create_with_an_absolute_checkpoint_folder_makes_a_job_every_site_refuses(fl_site, tmp_path: Path) -> None:
    app, workspace = fl_site
    elsewhere = tmp_path / "shared_folder"
    job = tmp_path / "job"
    assert main(["job", "create", "-m", str(SPLEEN_MMAR), "-o", str(job), "--set", f"MMAR_CKPT_DIR={elsewhere}"]) == 0
    shutil_env = json.loads((job / "app" / "config" / "environment.json").read_text())
    set_environment(app, MMAR_CKPT_DIR=shutil_env["MMAR_CKPT_DIR"])

    error = fl_learner_error(app, workspace)

    assert error is not None and "MMAR_CKPT_DIR" in error
    assert not elsewhere.exists()


# -- what must keep working ---------------------------------------------------------------------------


def all_configs() -> list[Path]:
    configs = sorted((REPO / "mmars").glob("*/config/config_*.json"))
    configs += sorted((REPO / "simulator_configs").glob("*/app/config/config_[!f]*.json"))
    if REFERENCE.is_dir():
        configs += [p for p in sorted(REFERENCE.rglob("config*.json")) if "fed" not in p.name] + sorted(
            REFERENCE.rglob("trn_*.json")
        )
    return configs


def components_of(value: object, path: str = ""):
    if isinstance(value, dict):
        if "name" in value or "path" in value:
            yield path, value
        for key, item in value.items():
            yield from components_of(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from components_of(item, f"{path}[{index}]")


@pytest.mark.parametrize("config_file", all_configs(), ids=lambda p: str(p.relative_to(p.parents[3])))
def test_every_shipped_and_reference_component_class_passes_the_restricted_policy(config_file: Path) -> None:
    byoc = REPO / "tests" / "reference_byoc"
    root = config_file.parents[1]
    restrictions = Restrictions(str(root))
    sys.path.insert(0, str(byoc))
    try:
        context = BuildContext(mmar_root=str(root), evaluator=RestrictedEvaluator())
        resolver = ConfigResolver({}, context=context)
        found = 0
        for path, spec in components_of(json.loads(config_file.read_text())):
            if "path" in spec and str(spec["path"]).split(".")[0] in ("myNetworkArch", "myLoss"):
                continue  # BYOC: allowed from the MMAR's custom/ folder (covered by its own test)
            context.restrictions = restrictions
            try:
                resolver._target(parse_component(spec, path))
            except ConfigError as e:  # e.g. a class MONAI removed: refused under every policy, for its own reason
                assert "restricted policy" not in str(e)
                context.restrictions = None
                with pytest.raises(ConfigError):
                    resolver._target(parse_component(spec, path))
            found += 1
    finally:
        sys.path.remove(str(byoc))
    assert found > 0


def test_safe_training_of_the_shipped_mmar_still_runs(spleen_mmar: Path) -> None:
    assert main(["train", "-m", str(spleen_mmar), "--safe", "--set", *tiny_set()]) == 0
    assert (spleen_mmar / "models" / "final_model.pt").is_file()


def test_an_fl_site_with_the_shipped_mmar_builds_under_the_default_policy(fl_site) -> None:
    app, workspace = fl_site

    assert fl_learner_error(app, workspace) is None
    assert os.path.isdir(app)


@pytest.mark.parametrize(
    ("arguments", "key"),
    [
        ({"global_model_file_name": "/tmp/anywhere/FL_global_model.pt"}, "global_model_file_name"),
        ({"best_global_model_file_name": "../../best.pt"}, "best_global_model_file_name"),
        ({"load_weights_only": False}, "load_weights_only"),
        ({"source_ckpt_file_full_name": "/etc/hostile.pt"}, "source_ckpt_file_full_name"),
    ],
)
def test_the_server_persistor_refuses_job_arguments_that_write_outside_or_unpickle(
    tmp_path: Path, arguments: dict, key: str
) -> None:
    from clara_fl.fl.server.persistor import check_persistor_arguments

    with pytest.raises(ConfigError, match=f"config/config_fed_server.json: components\\[persistor\\].args.{key}: "):
        check_persistor_arguments(arguments, str(tmp_path))


def test_the_server_persistor_accepts_the_shipped_arguments(tmp_path: Path) -> None:
    from clara_fl.fl.server.persistor import check_persistor_arguments

    check_persistor_arguments({"global_model_file_name": "FL_global_model.pt", "exclude_vars": None}, str(tmp_path))


def test_a_byoc_module_imported_earlier_from_another_app_folder_is_still_the_jobs_own_code(tmp_path: Path) -> None:
    """A simulator runs several sites' app folders in one process: the module name is cached from the first."""
    for site in ("app_site-1", "app_site-2"):
        (tmp_path / site / "custom").mkdir(parents=True)
        (tmp_path / site / "custom" / "shared_byoc_net.py").write_text("class Net:\n    pass\n")
    sys.path.insert(0, str(tmp_path / "app_site-1" / "custom"))
    try:
        import shared_byoc_net  # noqa: F401  (imported from site-1's folder, as the first site would)

        Restrictions(str(tmp_path / "app_site-2")).check_target(shared_byoc_net.Net, "shared_byoc_net.Net")
    finally:
        sys.path.remove(str(tmp_path / "app_site-1" / "custom"))
        sys.modules.pop("shared_byoc_net", None)


def test_a_jobs_custom_file_named_like_a_standard_module_does_not_admit_that_module(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "subprocess.py").write_text("")

    with pytest.raises(ConfigError, match="outside what the restricted policy builds"):
        Restrictions(str(tmp_path)).check_target(subprocess.Popen, "subprocess.Popen")


def test_a_jobs_custom_file_named_like_an_imported_package_does_not_admit_its_functions(tmp_path: Path) -> None:
    from clara_fl.runtime.files import write_json_atomic

    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "clara_fl.py").write_text("")

    with pytest.raises(ConfigError, match="not a class"):
        Restrictions(str(tmp_path)).check_target(write_json_atomic, "clara_fl.runtime.files.write_json_atomic")
