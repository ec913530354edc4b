"""The restricted policy's catalog and its judgement of resolved argument values (clara_fl.config.policy)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from clara_fl.config.errors import ConfigError
from clara_fl.config.expressions import RestrictedEvaluator
from clara_fl.config.locator import locate_path
from clara_fl.config.policy import Catalog, Kind, Planned, importable_name
from clara_fl.config.resolver import BuildContext, ConfigResolver
from clara_fl.config.restrictions import Restrictions


def restrictions(mmar: Path, data: Path | None = None, catalog: dict | None = None) -> Restrictions:
    (mmar / "config").mkdir(parents=True, exist_ok=True)
    return Restrictions(str(mmar), (str(data),) if data else None, catalog=catalog or {})


def judge(r: Restrictions, class_path: str, args: dict) -> None:
    """Admit the class and judge ``args`` as the resolver does (at the JSON path ``x``)."""
    r.check_module(class_path.rpartition(".")[0])
    target = locate_path(class_path)
    r.check_target(target, class_path.rsplit(".", 1)[-1])
    r.judge_args(target, class_path.rsplit(".", 1)[-1], args, "x")


def refusal(r: Restrictions, class_path: str, args: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        judge(r, class_path, args)
    text = str(caught.value)
    assert "\n" not in text
    return text


# -- which classes ----------------------------------------------------------------------------------------


def test_a_catalogued_class_has_one_rule_by_its_public_name_and_where_it_is_defined() -> None:
    import monai.transforms
    import monai.transforms.io.dictionary

    catalog = Catalog()

    rule = catalog.rule_for(monai.transforms.LoadImaged)

    assert rule is not None and rule.args["reader"].kind is Kind.NAME
    assert catalog.rule_for(monai.transforms.io.dictionary.LoadImageD) is rule


def test_a_family_member_gets_the_generic_rule() -> None:
    from monai.transforms import RandFlipd

    rule = Catalog().rule_for(RandFlipd)

    assert rule is not None and rule.generic


@pytest.mark.parametrize("name", ["WriteFileMappingd", "RandTorchVisiond", "TorchIO", "CuCIMd"])
def test_a_family_leaves_out_its_file_module_and_the_classes_that_name_other_libraries(name: str) -> None:
    import monai.transforms

    assert Catalog().rule_for(getattr(monai.transforms, name)) is None


def test_a_class_neither_catalogued_nor_in_a_family_is_not_admitted(tmp_path: Path) -> None:
    from monai.handlers import MLFlowHandler

    with pytest.raises(ConfigError, match=r"not in the restricted policy's catalog; a site .* clara_fl_site.json"):
        restrictions(tmp_path).check_target(MLFlowHandler, "MLFlowHandler")


def test_a_path_outside_the_catalogued_module_trees_is_refused_before_it_is_imported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="none of them"):
        restrictions(tmp_path).check_module("monai.apps.nnunet.__main__")
    assert "monai.apps.nnunet.__main__" not in sys.modules


def test_a_private_module_inside_a_catalogued_tree_is_refused_before_it_is_imported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="private modules"):
        restrictions(tmp_path).check_module("torch.nn._reduction")


# -- a site's own entries ------------------------------------------------------------------------------------


def test_a_site_entry_admits_a_class_and_its_arguments(tmp_path: Path) -> None:
    site = {"classes": {"monai.handlers.MLFlowHandler": {"args": {"tracking_uri": "refused"}}}}
    r = restrictions(tmp_path, catalog=site)

    judge(r, "monai.handlers.MLFlowHandler", {"experiment_name": "x"})
    assert "tracking_uri" in refusal(r, "monai.handlers.MLFlowHandler", {"tracking_uri": "http://x"})


def test_a_site_entry_replaces_only_the_arguments_it_names(tmp_path: Path) -> None:
    site = {"classes": {"monai.transforms.LoadImaged": {"args": {"image_only": "flag-true"}}}}
    r = restrictions(tmp_path, catalog=site)

    assert "image_only" in refusal(r, "monai.transforms.LoadImaged", {"keys": "image", "image_only": False})
    assert "reader" in refusal(r, "monai.transforms.LoadImaged", {"keys": "image", "reader": "os.system"})


def test_a_site_entry_may_name_the_objects_an_argument_takes(tmp_path: Path) -> None:
    allowed = {"kind": "name", "allowed": ["monai.data.NibabelReader"]}
    r = restrictions(tmp_path, catalog={"classes": {"monai.transforms.LoadImaged": {"args": {"reader": allowed}}}})

    judge(r, "monai.transforms.LoadImaged", {"keys": "image", "reader": "NibabelReader"})
    assert "got 'ITKReader'" in refusal(r, "monai.transforms.LoadImaged", {"keys": "image", "reader": "ITKReader"})


@pytest.mark.parametrize(
    ("catalog", "where"),
    [
        ({"classes": {"monai.X": {"args": {"a": "pathwrite"}}}}, "catalog.classes.monai.X.args.a"),
        ({"classes": {"monai.X": {"args": {"a": "name"}}}}, "catalog.classes.monai.X.args.a"),
        ({"classes": {"monai.X": {"argz": {}}}}, "catalog.classes.monai.X"),
        ({"classes": {"X": {}}}, "catalog.classes"),
        ({"clases": {}}, "catalog"),
    ],
)
def test_a_malformed_site_catalog_is_refused_naming_the_site_file_and_the_entry(
    tmp_path: Path, catalog: dict, where: str
) -> None:
    with pytest.raises(ConfigError, match=f"^clara_fl_site.json: {where}: "):
        restrictions(tmp_path, catalog=catalog)


# -- strings that name Python objects -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("os.system", "a Python callable ('os' is an importable module)"),
        ("builtins.exec", "a Python callable ('builtins' is an importable module)"),
        ("eval", "the Python builtin 'eval'"),
        ("open", "the Python builtin 'open'"),
        ("json", "the Python module 'json'"),
        ("image", None),
        ("bilinear", None),
        ("case_000.nii.gz", None),
        ("/data/case_000.nii.gz", None),
        ("no_such_module_here.attr", None),
    ],
)
def test_a_string_names_something_importable_when_a_library_could_locate_it(text: str, named: str | None) -> None:
    assert importable_name(text) == named


def test_telling_whether_a_string_names_a_module_imports_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "policy_probe_module.py").write_text(f"open({str(marker)!r}, 'w').close()\nvalue = 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        named = importable_name("policy_probe_module.value")
    finally:
        sys.path.remove(str(tmp_path))

    assert named is not None
    assert not marker.exists() and "policy_probe_module" not in sys.modules


# -- judging values by kind ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["NibabelReader", "monai.data.NibabelReader", "nibabelreader", None])
def test_a_name_argument_takes_the_objects_on_its_list(tmp_path: Path, reader: str | None) -> None:
    judge(restrictions(tmp_path), "monai.transforms.LoadImaged", {"keys": "image", "reader": reader})


def test_a_name_argument_refuses_an_importable_name_and_says_what_it_takes(tmp_path: Path) -> None:
    text = refusal(restrictions(tmp_path), "monai.transforms.LoadImage", {"reader": "os.system"})

    assert text == (
        "x.args.reader: 'os.system' names a Python callable ('os' is an importable module); LoadImage's reader "
        "takes one of MONAI's image readers (ITKReader, NibabelReader, NumpyReader, PILReader, PydicomReader, "
        "NrrdReader)"
    )


def test_a_name_argument_takes_a_component_of_a_class_on_its_list(tmp_path: Path) -> None:
    from monai.data import ITKWriter, NibabelReader

    r = restrictions(tmp_path)
    judge(r, "monai.transforms.LoadImaged", {"keys": "image", "reader": Planned(NibabelReader, "train.reader")})

    text = refusal(r, "monai.transforms.LoadImaged", {"keys": "image", "reader": Planned(ITKWriter, "train.w")})
    assert "got a ITKWriter component" in text


@pytest.mark.parametrize("value", [True, 1, "0", "false", [0], {"a": 1}])
def test_a_flag_that_must_be_false_is_refused_when_python_reads_it_as_true(tmp_path: Path, value: object) -> None:
    text = refusal(restrictions(tmp_path), "monai.data.NumpyReader", {"allow_pickle": value})

    assert text.startswith("x.args.allow_pickle: 'allow_pickle: ") and "it must be false" in text


@pytest.mark.parametrize("value", [False, 0, "", [], None])
def test_a_flag_that_must_be_false_takes_what_python_reads_as_false(tmp_path: Path, value: object) -> None:
    judge(restrictions(tmp_path), "monai.data.NumpyReader", {"allow_pickle": value})


@pytest.mark.parametrize("value", [False, 0, "", [], None])
def test_a_flag_that_must_be_true_is_refused_when_python_reads_it_as_false(tmp_path: Path, value: object) -> None:
    args = {"data": [], "transform": None, "cache_dir": None, "weights_only": value}

    text = refusal(restrictions(tmp_path), "monai.data.PersistentDataset", args)

    assert text.startswith("x.args.weights_only: 'weights_only: ") and "it must be true" in text


@pytest.mark.parametrize("value", [True, 1, "0", "false"])
def test_a_flag_that_must_be_true_takes_what_torch_reads_as_true(tmp_path: Path, value: object) -> None:
    judge(
        restrictions(tmp_path),
        "monai.data.PersistentDataset",
        {"data": [], "transform": None, "cache_dir": None, "weights_only": value},
    )


def test_a_flag_that_must_be_true_is_judged_by_its_library_default_when_left_out(tmp_path: Path) -> None:
    from clara_fl.config.policy import ArgumentJudge, ClassRule

    def loads(path: str, weights_only: bool = False) -> None: ...

    with pytest.raises(ConfigError, match=r"'weights_only: False' \(its default\) is refused"):
        ArgumentJudge(Catalog(), restrictions(tmp_path)).judge(loads, "loads", ClassRule(), {"path": "a"}, "x")


def test_options_passed_through_to_another_system_are_refused(tmp_path: Path) -> None:
    text = refusal(restrictions(tmp_path), "monai.engines.SupervisedEvaluator", {"compile_kwargs": {"mode": "x"}})

    assert text == (
        "x.args.compile_kwargs: 'compile_kwargs' is refused by the restricted policy: "
        "options passed through to torch.compile"
    )


def test_a_keyword_that_only_kwargs_would_take_is_refused_unless_catalogued(tmp_path: Path) -> None:
    r = restrictions(tmp_path)
    judge(r, "monai.transforms.LoadImaged", {"keys": "image", "channel_dim": 0})

    assert "goes through **kwargs to MONAI's image readers" in refusal(
        r, "monai.transforms.LoadImaged", {"keys": "image", "command": "id"}
    )


def test_a_keyword_of_the_class_kwargs_are_forwarded_to_is_data(tmp_path: Path) -> None:
    judge(restrictions(tmp_path), "monai.data.DataLoader", {"dataset": [], "batch_size": 2, "shuffle": True})


def test_a_folder_written_inside_the_job_is_accepted(tmp_path: Path) -> None:
    judge(
        restrictions(tmp_path / "job"),
        "monai.handlers.CheckpointSaver",
        {"save_dir": str(tmp_path / "job/models"), "save_dict": {}},
    )


@pytest.mark.parametrize("folder", ["{outside}", "{job}/../elsewhere", "~/models", "models"])
def test_a_folder_written_outside_the_job_is_refused(tmp_path: Path, monkeypatch, folder: str) -> None:
    monkeypatch.chdir(tmp_path)  # a relative folder is where the library puts it: under the working directory
    folder = folder.format(outside=tmp_path / "outside", job=tmp_path / "job")

    text = refusal(
        restrictions(tmp_path / "job"), "monai.handlers.CheckpointSaver", {"save_dir": folder, "save_dict": {}}
    )

    assert text.startswith("x.args.save_dir: ")


def test_a_relative_folder_is_accepted_when_the_working_directory_is_the_job(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)

    judge(restrictions(tmp_path), "monai.handlers.CheckpointSaver", {"save_dir": "models", "save_dict": {}})


def test_a_symlink_in_the_job_that_leads_out_is_followed_and_refused(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    r = restrictions(tmp_path / "job")
    (tmp_path / "job" / "out").symlink_to(tmp_path / "outside")

    assert "is outside this MMAR's folder" in refusal(
        r, "monai.handlers.MetricsSaver", {"save_dir": str(tmp_path / "job" / "out")}
    )


def test_the_library_default_of_a_written_folder_is_judged_when_left_out(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)

    text = refusal(restrictions(tmp_path / "job"), "monai.transforms.SaveImage", {})

    assert text.startswith("x.args.output_dir: SaveImage's default output_dir './' is outside this MMAR's folder")


def test_a_file_read_outside_the_site_data_and_the_job_is_refused(tmp_path: Path) -> None:
    r = restrictions(tmp_path / "job", data=tmp_path / "data")
    judge(r, "monai.data.CSVDataset", {"src": [str(tmp_path / "data" / "a.csv")]})

    text = refusal(r, "monai.data.CSVDataset", {"src": [str(tmp_path / "data" / "a.csv"), "/etc/passwd"]})
    assert text.startswith("x.args.src[1]: path '/etc/passwd' is outside the folders this site allows")


@pytest.mark.parametrize("postfix", ["../../x", "a/b", ".."])
def test_a_file_name_part_with_a_path_in_it_is_refused(tmp_path: Path, postfix: str) -> None:
    args = {"output_dir": str(tmp_path / "job" / "eval"), "output_postfix": postfix}

    assert "cannot be part of a file name" in refusal(
        restrictions(tmp_path / "job"), "monai.transforms.SaveImage", args
    )


def test_the_names_of_a_checkpoint_dict_become_file_names_and_are_judged_so(tmp_path: Path) -> None:
    args = {"save_dir": str(tmp_path / "job" / "models"), "save_dict": {"../../escaped": "x"}}

    text = refusal(restrictions(tmp_path / "job"), "monai.handlers.CheckpointSaver", args)

    assert text.startswith("x.args.save_dict.../../escaped: ")


def test_a_data_argument_refuses_a_name_of_a_python_object(tmp_path: Path) -> None:
    text = refusal(restrictions(tmp_path), "monai.transforms.ScaleIntensityd", {"keys": "image", "minv": "os.system"})

    assert "'os.system' names a Python callable" in text and "ScaleIntensityd's minv is plain data" in text


def test_a_word_argument_takes_any_string(tmp_path: Path) -> None:
    judge(restrictions(tmp_path), "monai.transforms.CopyItemsd", {"keys": ["json", "os.path"], "names": ["eval"]})


def test_an_option_word_spelled_like_a_builtin_is_a_word_in_every_catalogued_class(tmp_path: Path) -> None:
    r = restrictions(tmp_path)

    judge(r, "monai.handlers.MeanDice", {"reduction": "sum"})
    judge(r, "monai.losses.DiceLoss", {"reduction": "sum"})


def test_switches_inside_a_data_dictionary_are_judged_too(tmp_path: Path) -> None:
    args = {"keys": "image", "func": Planned("lambda x: x", "x", code=True), "inv_func": {"allow_pickle": True}}

    assert "x.args.inv_func.allow_pickle: 'allow_pickle: True'" in refusal(
        restrictions(tmp_path), "monai.transforms.Lambdad", args
    )


def test_config_code_in_a_sensitive_argument_is_refused_and_in_plain_data_accepted(tmp_path: Path) -> None:
    r = restrictions(tmp_path)
    code = Planned("#'NibabelReader'", "x", code=True)
    judge(r, "monai.transforms.ScaleIntensityd", {"keys": "image", "minv": code})

    text = refusal(r, "monai.transforms.LoadImaged", {"keys": "image", "reader": code})
    assert text == (
        "x.args.reader: config code is refused in LoadImaged's reader under the restricted policy: its value "
        "(a name it imports) must be known before anything is built"
    )


def test_a_family_class_refuses_an_argument_whose_name_says_it_is_a_path(tmp_path: Path) -> None:
    from clara_fl.config.policy import ClassRule

    rule = Catalog().argument_rule(ClassRule(generic=True), "weights_path", None)

    assert rule is not None and rule.kind is Kind.REFUSED


def test_the_arguments_of_byoc_classes_are_left_to_the_byoc_right(tmp_path: Path) -> None:
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "policy_byoc_thing.py").write_text(
        "class Thing:\n    def __init__(self, reader):\n        pass\n"
    )
    sys.path.insert(0, str(tmp_path / "custom"))
    try:
        import policy_byoc_thing

        restrictions(tmp_path).judge_args(policy_byoc_thing.Thing, "Thing", {"reader": "os.system"}, "x")
    finally:
        sys.path.remove(str(tmp_path / "custom"))
        sys.modules.pop("policy_byoc_thing", None)


# -- when values are judged --------------------------------------------------------------------------------------


def build(config: dict, r: Restrictions, dry_run: bool) -> None:
    context = BuildContext(mmar_root=r.mmar_root, evaluator=RestrictedEvaluator(), restrictions=r)
    ConfigResolver(config, file="config/config_train.json", context=context, dry_run=dry_run).build_all()


def test_a_value_is_judged_in_the_dry_run_before_anything_is_built(tmp_path: Path) -> None:
    config = {"train": {"saver": {"name": "SaveImaged", "args": {"keys": "pred", "output_dir": "/elsewhere"}}}}

    with pytest.raises(ConfigError, match=r"^config/config_train.json: train.saver.args.output_dir: '/elsewhere'"):
        build(config, restrictions(tmp_path), dry_run=True)


def test_a_value_only_known_when_building_is_judged_again_just_before_construction(tmp_path: Path) -> None:
    config = {"train": {"scale": {"name": "ScaleIntensityd", "args": {"keys": "image", "minv": "#'os.system'"}}}}
    r = restrictions(tmp_path)
    build(config, r, dry_run=True)

    with pytest.raises(ConfigError, match="train.scale.args.minv: 'os.system' names a Python callable"):
        build(config, r, dry_run=False)


def test_a_metric_label_becomes_a_file_name_and_is_judged_so(tmp_path: Path) -> None:
    config = {"train": {"metric": {"name": "MeanDice", "log_label": "../../escaped", "args": {}}}}

    with pytest.raises(ConfigError, match=r"train.metric.log_label: '../../escaped' cannot be part of a file name"):
        build(config, restrictions(tmp_path), dry_run=True)


def test_the_shipped_train_config_judges_clean(spleen_mmar: Path, synthetic_data) -> None:
    from clara_fl.config.mmar import load_config
    from clara_fl.config.restrictions import CodePolicy
    from clara_fl.workflows.build import check_config
    from clara_fl.workflows.runtime import with_runtime

    loaded = load_config(spleen_mmar, "config/config_train.json", overrides={"num_workers": 0})
    context = with_runtime(BuildContext(mmar_root=str(spleen_mmar), evaluator=RestrictedEvaluator()))
    policy = CodePolicy("restricted", (str(synthetic_data.root),))
    context.restrictions = Restrictions(str(spleen_mmar), policy.data_roots, context.runtime.search_modules)

    check_config(loaded, context)

    assert not (spleen_mmar / "models").exists()


# -- looking at a class before the policy -------------------------------------------------------------------------


def test_a_class_is_looked_at_before_the_policy_only_where_importing_it_runs_no_foreign_code(tmp_path: Path) -> None:
    from clara_fl.config.locator import locate_component

    for folder, body in (("custom", "class Engine:\n    pass\n"), ("elsewhere", "raise SystemExit('imported')\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"policy_look_{folder}.py").write_text(body)
        sys.path.insert(0, str(tmp_path / folder))
    try:
        custom = locate_component({"path": "policy_look_custom.Engine"})
        elsewhere = locate_component({"path": "policy_look_elsewhere.Engine"})
        library = locate_component({"name": "SupervisedTrainer"})

    finally:
        for folder in ("custom", "elsewhere"):
            sys.path.remove(str(tmp_path / folder))
            sys.modules.pop(f"policy_look_{folder}", None)
    assert getattr(custom, "__name__", None) == "Engine" and elsewhere is None
    assert getattr(library, "__name__", None) == "SupervisedTrainer"
