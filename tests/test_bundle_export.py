"""``clara-fl bundle export``: an MMAR becomes a MONAI bundle that MONAI's own tools run, with clara-fl's results.

Every bundle command runs as ``python -m monai.bundle ...`` in a subprocess whose path puts a fake
``clara_fl`` package first, one that fails on import: the bundle must not need clara-fl.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch

from clara_fl.cli import main
from tests.conftest import REFERENCE, copy_mmar, tiny_set

BYOC = Path(__file__).parent / "reference_byoc"
GETTING_STARTED = REFERENCE / "GettingStarted" / "config"
SITES = ["site-1", "site-2"]


@pytest.fixture(scope="module")
def no_clara_fl(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment in which importing clara_fl fails."""
    shadow = tmp_path_factory.mktemp("shadow")
    (shadow / "clara_fl").mkdir()
    (shadow / "clara_fl" / "__init__.py").write_text("raise ImportError('a bundle must run without clara_fl')\n")
    return {**os.environ, "PYTHONPATH": str(shadow)}


def monai_bundle(bundle: Path, env: dict[str, str], *args: str) -> str:
    """``python -m monai.bundle ARGS`` in ``bundle``; returns its output (a non-zero exit fails the test with it)."""
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=bundle, env=env, capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def export(mmar: Path, out: Path, *extra: str) -> Path:
    assert main(["bundle", "export", "-m", str(mmar), "-o", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def spleen_bundle(trained_spleen: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-epoch trained spleen MMAR as a bundle, with the tiny run settings baked in (read-only for tests)."""
    return export(trained_spleen, tmp_path_factory.mktemp("bundle") / "spleen_bundle", "--set", *tiny_set())


def fresh_copy(bundle: Path, destination: Path, with_model: bool = True) -> Path:
    shutil.copytree(bundle, destination, ignore=None if with_model else shutil.ignore_patterns("*.pt"))
    return destination


def scalars(log_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: list[float] = []
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values += [e.value for e in accumulator.Scalars(tag)]
    return values


def metric_rows(path: Path) -> dict[str, float]:
    """MetricsSaver's metrics.csv: ``{metric name: value}``."""
    rows = {}
    for line in path.read_text().splitlines():
        name, _, value = line.replace("\t", ",").partition(",")
        rows[name] = float(value)
    return rows


# -- values ConfigParser must read back as Clara meant them ---------------------------------------------


def test_literal_strings_with_hash_or_reference_marks_read_back_unchanged() -> None:
    from monai.bundle import ConfigParser

    from clara_fl.bundle.syntax import literal

    texts = ["model#best.pt", "@not_a_reference", "$5", "%macro", "plain"]
    parser = ConfigParser({f"v{i}": literal(text) for i, text in enumerate(texts)})
    assert [parser.get_parsed_content(f"v{i}") for i in range(len(texts))] == texts


def test_text_around_a_variable_follows_the_variable_when_it_is_overridden() -> None:
    from monai.bundle import ConfigParser

    from clara_fl.bundle.variables import BundleVariables

    variables = BundleVariables({"DATA_ROOT": "/data"}, "/mmar", "config/config_train.json")
    items = {**variables.items(set()), "bundle_root": ".", "list": variables.text("{DATA_ROOT}/lists/#1.json", "x")}
    parser = ConfigParser(items)
    parser["dataset_dir"] = "/elsewhere"  # what `--dataset_dir` does (MONAI's name for Clara's DATA_ROOT)
    assert parser.get_parsed_content("list") == "/elsewhere/lists/#1.json"


@pytest.mark.parametrize(("word", "disabled"), [("yes", True), ("On", True), ("no", False), (False, False)])
def test_disabled_by_a_variable_follows_clara_boolean_words(word: object, disabled: bool) -> None:
    from monai.bundle import ConfigParser

    from clara_fl.bundle.translate import ClaraConfig, _Translator
    from clara_fl.bundle.variables import BundleVariables

    variables = BundleVariables({"skip": word}, "/mmar", "config/config_train.json")
    source = ClaraConfig({}, variables, "config/config_train.json")
    spec = {"name": "Identityd", "disabled": "{skip}", "args": {"keys": "image"}}
    handlers = [_Translator(source, {"": {}}, {"": ""}).component(spec, "handlers[0]", "")]
    parser = ConfigParser({**variables.items(set()), "bundle_root": ".", "handlers": handlers})
    assert len(parser.get_parsed_content("handlers")) == (0 if disabled else 1)


def test_a_variable_named_like_an_item_every_bundle_has_is_an_error() -> None:
    from clara_fl.bundle.translate import RESERVED_IDS
    from clara_fl.bundle.variables import BundleVariables
    from clara_fl.config.errors import ConfigError

    variables = BundleVariables({"device": "cuda"}, "/mmar", "config/config_train.json")
    with pytest.raises(ConfigError, match="config/config_train.json: device: variable 'device'"):
        variables.items(set(RESERVED_IDS))


# -- the exported folder ---------------------------------------------------------------------------------


def test_export_writes_configs_metadata_weights_and_docs_without_clara_fl(
    spleen_bundle: Path, trained_spleen: Path
) -> None:
    for name in ("metadata.json", "train.json", "evaluate.json", "inference.json"):
        text = (spleen_bundle / "configs" / name).read_text()
        assert "clara_fl" not in text, name
        json.loads(text)
    weights = torch.load(spleen_bundle / "models" / "model.pt", weights_only=True)
    trained = torch.load(trained_spleen / "models" / "model.pt", weights_only=True)["model"]
    assert weights.keys() == trained.keys() and all(torch.equal(weights[k], trained[k]) for k in weights)
    metadata = json.loads((spleen_bundle / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == 2
    assert metadata["monai_version"] and metadata["pytorch_version"] and metadata["task"].startswith("segmentation")
    assert (
        "python -m monai.bundle run --config_file configs/train.json"
        in (spleen_bundle / "docs" / "README.md").read_text()
    )


def test_train_config_keeps_the_mmar_variables_and_reads_the_datalist_with_monai(spleen_bundle: Path) -> None:
    train = json.loads((spleen_bundle / "configs" / "train.json").read_text())
    assert train["epochs"] == 1 and train["roi_size"] == [16, 16, 16]
    assert train["optimizer"]["lr"] == "@learning_rate"
    assert train["train"]["dataset"]["data"] == (
        "$monai.data.load_decathlon_datalist(@DATASET_JSON, True, @TRAIN_DATALIST_KEY, @DATA_ROOT)"
    )
    # Clara's 'ref' transforms are the train transforms themselves.
    assert train["validate"]["pre_transforms"][0] == "@train#pre_transforms#0"


# -- MONAI's own commands on the bundle ------------------------------------------------------------------


def test_bundle_training_repeats_clara_fl_train_loss_curve_and_weights(
    spleen_bundle: Path, trained_spleen: Path, tmp_path: Path, no_clara_fl: dict[str, str]
) -> None:
    bundle = fresh_copy(spleen_bundle, tmp_path / "b", with_model=False)
    monai_bundle(bundle, no_clara_fl, "run", "--config_file", "configs/train.json")

    clara_losses = scalars(trained_spleen / "models", "train_loss")
    bundle_losses = scalars(bundle / "models", "train_loss")
    assert len(bundle_losses) == len(clara_losses) > 0
    assert bundle_losses == pytest.approx(clara_losses, rel=1e-5, abs=1e-6)
    clara = torch.load(trained_spleen / "models" / "final_model.pt", weights_only=True)["model"]
    final = torch.load(bundle / "models" / "final_model.pt", weights_only=True)
    final = final.get("model", final)
    assert final.keys() == clara.keys()
    for key in clara:
        torch.testing.assert_close(final[key].float(), clara[key].float(), rtol=1e-4, atol=1e-5)


def test_bundle_evaluation_gives_clara_fl_key_metric_on_the_same_model(
    spleen_bundle: Path, trained_spleen: Path, synthetic_data, tmp_path: Path, no_clara_fl: dict[str, str]
) -> None:
    bundle = fresh_copy(spleen_bundle, tmp_path / "b")
    monai_bundle(bundle, no_clara_fl, "run", "--config_file", "configs/evaluate.json")
    mmar = copy_mmar(trained_spleen, tmp_path / "mmar", synthetic_data.root)
    shutil.copytree(trained_spleen / "models", mmar / "models")
    from_checkpoint = ["dont_load_ts_model=True", "dont_load_ckpt_model=False"]
    assert main(["validate", "-m", str(mmar), "--set", *from_checkpoint, *tiny_set()]) == 0

    bundle_metrics = metric_rows(bundle / "eval" / "metrics.csv")
    clara_metrics = metric_rows(mmar / "eval" / "metrics.csv")
    assert bundle_metrics["val_mean_dice"] == pytest.approx(clara_metrics["val_mean_dice"], rel=1e-6)
    assert (bundle / "eval" / "val_mean_dice_raw.csv").read_text().count(".nii.gz") == 2  # per case, named


def test_bundle_inference_writes_a_mask_per_test_case(
    spleen_bundle: Path, tmp_path: Path, no_clara_fl: dict[str, str]
) -> None:
    bundle = fresh_copy(spleen_bundle, tmp_path / "b")
    monai_bundle(bundle, no_clara_fl, "run", "--config_file", "configs/inference.json")
    masks = list((bundle / "eval").glob("*/*_seg.nii.gz"))
    assert len(masks) == 1


@pytest.fixture(scope="module")
def bundle_without_inference_config(trained_spleen: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained spleen MMAR with no config_inference.json and no saver in its validation config, as a bundle."""
    mmar = tmp_path_factory.mktemp("no_inference") / "spleen_ct_seg"
    shutil.copytree(trained_spleen, mmar)
    (mmar / "config" / "config_inference.json").unlink()
    validation_file = mmar / "config" / "config_validation.json"
    validation = json.loads(validation_file.read_text())
    validation["post_transforms"] = [t for t in validation["post_transforms"] if t["name"] != "SaveImaged"]
    validation_file.write_text(json.dumps(validation))
    return export(mmar, mmar.parent / "bundle", "--set", *tiny_set())


def test_an_mmar_without_inference_config_gets_one_derived_from_validation_that_writes_a_mask_per_image(
    bundle_without_inference_config: Path, synthetic_data, tmp_path: Path, no_clara_fl: dict[str, str]
) -> None:
    import nibabel as nib

    bundle = fresh_copy(bundle_without_inference_config, tmp_path / "b")

    monai_bundle(bundle, no_clara_fl, "run", "--config_file", "configs/inference.json")

    images = [synthetic_data.root / p for p in json.loads(synthetic_data.dataset_json.read_text())["test"]]
    masks = {m.name: m for m in (bundle / "eval").glob("*/*_seg.nii.gz")}
    assert sorted(masks) == sorted(i.name.replace(".nii.gz", "_seg.nii.gz") for i in images)
    for image in images:
        mask = nib.load(str(masks[image.name.replace(".nii.gz", "_seg.nii.gz")]))
        assert mask.shape == nib.load(str(image)).shape  # a label map in the image's space, not one-hot channels
        assert set(numpy.unique(numpy.asanyarray(mask.dataobj)).tolist()) <= {0.0, 1.0}


def test_the_readme_says_the_inference_config_was_derived_from_the_validation_config(
    bundle_without_inference_config: Path,
) -> None:
    readme = (bundle_without_inference_config / "docs" / "README.md").read_text()

    assert (
        "`configs/inference.json` was derived from the validation config\n  `config/config_validation.json`" in readme
    )


def test_ckpt_export_turns_the_bundle_weights_into_torchscript(
    spleen_bundle: Path, tmp_path: Path, no_clara_fl: dict[str, str]
) -> None:
    bundle = fresh_copy(spleen_bundle, tmp_path / "b")
    monai_bundle(
        bundle, no_clara_fl, "ckpt_export", "--config_file", "configs/train.json", "--filepath", "models/model.ts"
    )
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    assert scripted(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


# -- BYOC -----------------------------------------------------------------------------------------------


@pytest.fixture
def byoc_mmar(tmp_path: Path, synthetic_data) -> Path:
    """The reference GettingStarted MMAR with trn_BYOC_Arch_loss.json and its custom/ code.

    Crops are 16^3 and the network narrow, so it trains in seconds."""
    if not GETTING_STARTED.is_dir():
        pytest.skip("shared/reference is not checked out beside the repo")
    mmar = tmp_path / "byoc"
    shutil.copytree(GETTING_STARTED, mmar / "config")
    shutil.copytree(BYOC, mmar / "custom")
    config_file = mmar / "config" / "trn_BYOC_Arch_loss.json"
    config = json.loads(config_file.read_text())
    for transform in config["train"]["pre_transforms"]:
        if transform["name"] == "RandCropByPosNegLabeld":
            transform["args"]["spatial_size"] = [16, 16, 16]
    config["validate"]["inferer"]["args"]["roi_size"] = [16, 16, 16]
    config["train"]["model"]["args"]["features"] = [4, 4, 8, 8, 16, 4]
    config_file.write_text(json.dumps(config, indent=2))
    environment = json.loads((mmar / "config" / "environment.json").read_text())
    environment.update(DATA_ROOT=str(synthetic_data.root), DATASET_JSON=str(synthetic_data.dataset_json))
    (mmar / "config" / "environment.json").write_text(json.dumps(environment))
    return mmar


def test_byoc_code_goes_to_scripts_and_the_bundle_trains_as_clara_fl_does(
    byoc_mmar: Path, tmp_path: Path, no_clara_fl: dict[str, str]
) -> None:
    settings = ["epochs=1", "num_interval_per_valid=2"]  # one epoch, no validation
    bundle = export(
        byoc_mmar, tmp_path / "bundle", "--train-config", "config/trn_BYOC_Arch_loss.json", "--set", *settings
    )
    assert (bundle / "scripts" / "myLoss.py").read_bytes() == (BYOC / "myLoss.py").read_bytes()
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert train["network_def"]["_target_"] == "myNetworkArch.MyBasicUNet"
    assert train["loss"]["_target_"] == "myLoss.MyDiceLoss"
    assert "n_classes" not in json.dumps(train)  # MONAI 1.6 removed it; to_onehot carries the class count

    monai_bundle(bundle, no_clara_fl, "run", "--config_file", "configs/train.json")
    assert main(["train", "-m", str(byoc_mmar), "-c", "config/trn_BYOC_Arch_loss.json", "--set", *settings]) == 0

    clara_losses = scalars(byoc_mmar / "models", "train_loss")
    assert len(clara_losses) > 0
    assert scalars(bundle / "models", "train_loss") == pytest.approx(clara_losses, rel=1e-5, abs=1e-6)


def test_byoc_network_exports_to_torchscript_from_outside_the_bundle_folder(
    byoc_mmar: Path, tmp_path: Path, no_clara_fl: dict[str, str]
) -> None:
    bundle = export(byoc_mmar, tmp_path / "bundle", "--train-config", "config/trn_BYOC_Arch_loss.json")
    from monai.networks.nets import BasicUNet

    # MyBasicUNet is a BasicUNet with Clara 4.0's argument names: the same weights.
    network = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4), norm="batch")
    (bundle / "models").mkdir()
    torch.save(network.state_dict(), bundle / "models" / "model.pt")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monai_bundle(
        elsewhere,
        no_clara_fl,
        "ckpt_export",
        "--config_file",
        str(bundle / "configs" / "train.json"),
        "--bundle_root",
        str(bundle),
        "--ckpt_file",
        str(bundle / "models" / "model.pt"),
        "--filepath",
        str(bundle / "models" / "model.ts"),
    )
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    assert scripted(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


# -- what a bundle cannot say ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "index", "arg", "value", "named"),
    [
        ("handlers", 4, "output_transform", "#lambda x: x['loss'] if '#' else None", "'#'"),  # ConfigParser's separator
        ("handlers", 1, "lr_scheduler", "@conf", "'@conf'"),  # the whole Clara config as an object
        ("post_transforms", 0, "keys", "#monai.handlers.from_engine(['pred_meta_dict'], first=True)", "_meta_dict"),
    ],
)
def test_a_construct_without_bundle_equivalent_is_a_one_line_error_and_nothing_is_written(
    spleen_mmar: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    section: str,
    index: int,
    arg: str,
    value: str,
    named: str,
) -> None:
    config_file = spleen_mmar / "config" / "config_train.json"
    config = json.loads(config_file.read_text())
    config["train"][section][index]["args"][arg] = value
    config_file.write_text(json.dumps(config))

    code = main(["bundle", "export", "-m", str(spleen_mmar), "-o", str(tmp_path / "bundle")])

    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.count("\n") == 0
    assert f"config/config_train.json: train.{section}[{index}].args.{arg}:" in error and named in error
    assert not (tmp_path / "bundle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle-")]


# -- MONAI's FL client in FLARE's simulator ------------------------------------------------------------


@pytest.mark.e2e
def test_the_bundle_federates_through_monai_algo_in_the_flare_simulator(
    spleen_bundle: Path, synthetic_data, tmp_path: Path, no_clara_fl: dict[str, str]
) -> None:
    from monai.bundle import ConfigParser
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe

    bundle = fresh_copy(spleen_bundle, tmp_path / "bundle", with_model=False)
    shutil.copy(spleen_bundle / "models" / "model.pt", tmp_path / "b_weights.pt")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    network = {k: parser.get_parsed_content(f"network_def#{k}") for k in parser["network_def"] if k != "_target_"}
    staging = tmp_path / "staging"
    staging.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "bench" / "monai_fl" / "client.py", staging)
    cwd = os.getcwd()
    os.chdir(staging)  # the recipe records the script path as given: relative to the app's custom/
    try:
        recipe = FedAvgRecipe(
            name="bundle_fedavg",
            min_clients=2,
            num_rounds=1,
            model={"class_path": parser["network_def"]["_target_"], "args": network},
            train_script="client.py",
            train_args=f"--local_epochs 1 --data_root {synthetic_data.root} "
            f"--datalist_pattern {synthetic_data.root}/dataset_{{SITE_NAME}}.json",
            key_metric="val_mean_dice",
        )
        recipe.export(str(tmp_path / "jobs"))
    finally:
        os.chdir(cwd)
    job = tmp_path / "jobs" / "bundle_fedavg"
    shutil.copytree(bundle, job / "app" / "custom" / "bundle")

    done = subprocess.run(
        [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(tmp_path / "ws"), "-n", "2", "-t", "2"],
        env=no_clara_fl,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    server = tmp_path / "ws" / "server" / "simulate_job"
    rounds = [json.loads(line) for line in (server / "metrics" / "round_metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0]
    # Both sites trained (FedAvg weighs each result by the steps MonaiAlgo reports) and were aggregated.
    assert {s["name"]: s["weight"] > 0 for s in rounds[0]["sites"]} == {site: True for site in SITES}
    global_model = torch.load(server / "app_server" / "FL_global_model.pt", weights_only=True)
    assert set(global_model["model"]) == set(torch.load(bundle.parent / "b_weights.pt", weights_only=True))


# -- the classification MMAR ------------------------------------------------------------------------------


def test_the_classification_mmar_bundle_trains_evaluates_infers_and_exports_with_monai_alone(
    tmp_path: Path, no_clara_fl: dict[str, str]
) -> None:
    from clara_fl.data.synthetic_classification import make_classification_dataset
    from tests.test_classification_mmar import CLS_MMAR

    data = make_classification_dataset(tmp_path / "data", cases=12, sites=2, size=32)
    mmar = copy_mmar(CLS_MMAR, tmp_path / "chest_xray_cls", data.root)
    fast = ["epochs=1", "num_workers=0", "batch_size=4"]
    assert main(["train", "-m", str(mmar), "--set", *fast]) == 0
    bundle = export(mmar, tmp_path / "bundle", "--set", *fast)

    monai_bundle(bundle, no_clara_fl, "run", "--config_file", "configs/train.json")
    monai_bundle(bundle, no_clara_fl, "run", "--config_file", "configs/evaluate.json")
    monai_bundle(bundle, no_clara_fl, "run", "--config_file", "configs/inference.json")
    monai_bundle(
        bundle, no_clara_fl, "ckpt_export", "--config_file", "configs/train.json", "--filepath", "models/model.ts"
    )

    assert {"val_auc", "val_accuracy"} <= set(metric_rows(bundle / "eval" / "metrics.csv"))
    assert (bundle / "eval" / "predictions.csv").read_text().count(".png") == 1  # the one test case
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    assert scripted(torch.zeros(1, 1, 32, 32)).shape == (1, 2)
