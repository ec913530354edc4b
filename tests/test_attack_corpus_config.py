"""Attacks on the restricted policy through a job's config, by kind: each is refused with one line naming the
config item, before anything is built, and leaves nothing written or run.

Every attack builds a small config in a job folder through :func:`clara_fl.workflows.build.build_components`
(the path every run takes) with the site's data in a folder of its own; the payload would create ``owned``.
The four cases of issue 24 also run under the full policy, to show the payload is real.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from clara_fl.config.errors import ConfigError
from clara_fl.config.mmar import load_config
from clara_fl.config.policy import Kind
from clara_fl.config.policy.builtin import CLASSES
from clara_fl.config.restrictions import CodePolicy
from clara_fl.workflows.build import build_components

TRAIN = "config/config_train.json"


@dataclass
class Job:
    """A job folder (the MMAR), the site's data folder beside it, and the file a payload would create."""

    root: Path
    data: Path
    marker: Path

    def write(self, config: dict, environment: dict | None = None, name: str = TRAIN) -> None:
        (self.root / name).write_text(json.dumps(config))
        (self.root / "config" / "environment.json").write_text(json.dumps(environment or {}))

    def build(self, config: dict, environment: dict | None = None, policy: str = "restricted", name: str = TRAIN):
        self.write(config, environment, name)
        return build_components(load_config(self.root, name), code_policy=CodePolicy(policy, (str(self.data),)))

    def refuse(self, config: dict, item: str, environment: dict | None = None, name: str = TRAIN) -> str:
        """Build under the restricted policy; the refusal names ``item``; nothing was written or run."""
        data_before = sorted(p.name for p in self.data.iterdir())
        with pytest.raises(ConfigError) as refused:
            self.build(config, environment, name=name)
        text = str(refused.value)
        assert "\n" not in text
        assert text.startswith(f"{name}: {item}: "), text
        assert not self.marker.exists()
        assert sorted(p.name for p in self.root.iterdir()) == ["config"]
        assert sorted(p.name for p in self.data.iterdir()) == data_before
        return text


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Job:
    monkeypatch.setenv("PYTHONBREAKPOINT", "0")  # were a bare 'breakpoint' ever called, it returns at once
    monkeypatch.chdir(tmp_path)  # the working directory of a site: neither the job nor the data
    root, data = tmp_path / "job", tmp_path / "site_data"
    (root / "config").mkdir(parents=True)
    data.mkdir()
    (data / "case_000.txt").write_text("a case")
    return Job(root, data, tmp_path / "owned")


def train(**items: object) -> dict:
    return {"train": items}


# -- names of Python objects in every catalogued argument that takes one -----------------------------------

# The arguments MONAI and torchvision turn into an object (pydoc.locate, getattr on a module), with the least
# else their class needs to be built.
NAME_ARGUMENTS = sorted(
    (class_name, arg)
    for class_name, rule in CLASSES.items()
    for arg, arg_rule in rule.args.items()
    if arg_rule.kind is Kind.NAME
)
REQUIRED: dict[str, dict[str, object]] = {
    "monai.transforms.LoadImaged": {"keys": "image"},
    "monai.transforms.SaveImaged": {"keys": "pred", "output_dir": "{MMAR_ROOT}/eval"},
    "monai.transforms.SaveImage": {"output_dir": "{MMAR_ROOT}/eval"},
    "monai.transforms.TorchVisiond": {"keys": "image"},
    "monai.data.ImageDataset": {"image_files": []},
    "monai.data.PatchWSIDataset": {"data": []},
}


def marker_arguments(payload: str, marker: Path) -> dict:
    """What a payload would be called with (LoadImage hands its leftover keywords to the reader)."""
    if payload == "open":
        return {"file": str(marker), "mode": "w"}
    if payload in ("subprocess.call", "subprocess.Popen"):
        return {"args": ["touch", str(marker)]}
    return {"command": f"touch {marker}"}


PAYLOADS = ["os.system", "subprocess.call", "builtins.exec", "eval", "exec", "breakpoint", "open"]


def test_the_corpus_covers_every_catalogued_argument_that_takes_a_name() -> None:
    assert {(c.rsplit(".", 1)[-1], a) for c, a in NAME_ARGUMENTS} >= {
        ("LoadImage", "reader"),
        ("LoadImaged", "reader"),
        ("SaveImage", "writer"),
        ("SaveImaged", "writer"),
        ("TorchVision", "name"),
        ("TorchVisiond", "name"),
        ("TorchVisionFCModel", "model_name"),
        ("ImageDataset", "reader"),
        ("PatchWSIDataset", "reader"),
    }


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize(("class_name", "arg"), NAME_ARGUMENTS, ids=lambda v: str(v).rsplit(".", 1)[-1])
def test_a_python_name_in_an_argument_that_takes_a_name_is_refused(
    job: Job, class_name: str, arg: str, payload: str
) -> None:
    args: dict[str, object] = {**REQUIRED.get(class_name, {}), arg: payload}
    if "Load" in class_name:
        args.update(marker_arguments(payload, job.marker))

    text = job.refuse(train(pwn={"path": class_name, "args": args}), f"train.pwn.args.{arg}")

    assert f"'{payload}' names " in text and " takes one of " in text


@pytest.mark.parametrize(
    ("value", "environment", "extra"),
    [
        ("#'os.system'", {}, {}),
        ("{READER}", {"READER": "os.system"}, {}),
        ("@reader_name", {}, {"reader_name": "os.system"}),
        ("@reader", {}, {"reader": {"path": "os.system", "args": {"command": "touch {marker}"}}}),
    ],
    ids=["code", "variable", "ref-to-a-string", "ref-to-a-component"],
)
@pytest.mark.parametrize(("class_name", "arg"), NAME_ARGUMENTS, ids=lambda v: str(v).rsplit(".", 1)[-1])
def test_a_python_name_reaching_a_name_argument_by_code_variable_or_reference_is_refused(
    job: Job, class_name: str, arg: str, value: str, environment: dict, extra: dict
) -> None:
    extra = json.loads(json.dumps(extra).replace("{marker}", str(job.marker)))
    config = train(pwn={"path": class_name, "args": {**REQUIRED.get(class_name, {}), arg: value}}, **extra)
    item = "train.reader.path" if value == "@reader" else f"train.pwn.args.{arg}"

    text = job.refuse(config, item, environment)

    assert "os.system" in text or "config code is refused" in text or "'os' is none of them" in text


LOADER = {"name": "LoadImage", "args": {"reader": "os.system", "command": "touch {marker}"}}


def loader(job: Job) -> dict:
    return json.loads(json.dumps(LOADER).replace("{marker}", str(job.marker)))


def network(act: object) -> dict:
    """A tiny UNet whose activation argument holds ``act`` (MONAI builds a layer from it)."""
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [2, 4], "strides": [2], "act": act}
    return {"name": "UNet", "args": args}


def in_a_transform_list(pwn: dict) -> dict:
    transforms = [{"name": "ToTensord", "args": {"keys": "image"}}, pwn]
    compose = {"name": "Compose", "args": {"transforms": transforms}}
    return train(dataset={"name": "Dataset", "args": {"data": [], "transform": compose}})


def in_a_handler(pwn: dict) -> dict:
    return train(
        handlers=[{"name": "StatsHandler", "args": {}}, {"name": "PostProcessing", "args": {"transform": pwn}}]
    )


PLACES = {
    "section-item": (lambda pwn: train(pwn=pwn), "train.pwn.args.reader"),
    "in-model-args": (lambda pwn: train(model=network(pwn)), "train.model.args.act.args.reader"),
    "in-a-list-in-another-component": (
        in_a_transform_list,
        "train.dataset.args.transform.args.transforms[1].args.reader",
    ),
    "in-validate": (
        lambda pwn: {"train": {}, "validate": {"pre_transforms": [pwn]}},
        "validate.pre_transforms[0].args.reader",
    ),
    "in-a-handler": (in_a_handler, "train.handlers[1].args.transform.args.reader"),
}


@pytest.mark.parametrize("place", PLACES)
def test_the_payload_is_refused_wherever_it_sits_in_the_config(job: Job, place: str) -> None:
    where, item = PLACES[place]

    job.refuse(where(loader(job)), item)


def test_the_payload_in_a_flat_config_is_refused(job: Job) -> None:
    job.refuse({"pre_transforms": [loader(job)]}, "pre_transforms[0].args.reader", name="config/config_validation.json")


def test_issue_24_the_reader_nested_in_the_network_is_refused_where_the_server_builds_it(job: Job) -> None:
    from clara_fl.workflows.network import build_train_network

    job.write(train(model=network(loader(job))))

    with pytest.raises(ConfigError, match=r"^config/config_train.json: train.model.args.act.args.reader: "):
        build_train_network(str(job.root))
    assert not job.marker.exists()


# -- switches that unpickle, download or compile, in every spelling --------------------------------------------


def persistent(**args: object) -> dict:
    base = {"data": [{"image": "x"}], "transform": None, "cache_dir": "{MMAR_ROOT}/cache"}
    return train(dataset={"name": "PersistentDataset", "args": {**base, **args}})


@pytest.mark.parametrize("value", [False, "", 0, [], None, "{W}"])
def test_weights_only_that_torch_reads_as_false_is_refused(job: Job, value: object) -> None:
    text = job.refuse(persistent(weights_only=value), "train.dataset.args.weights_only", {"W": False})

    assert "it must be true" in text


@pytest.mark.parametrize(
    ("arg", "value"),
    [("pickle_module", "dill"), ("hash_func", "lambda x: b'../../x'"), ("hash_transform", "#'x'")],
)
def test_persistent_cache_options_that_pickle_or_name_files_are_refused(job: Job, arg: str, value: object) -> None:
    job.refuse(persistent(**{arg: value}), f"train.dataset.args.{arg}")


@pytest.mark.parametrize("value", [True, 1, "true", "0", [0], "{P}"])
def test_allow_pickle_that_numpy_reads_as_true_is_refused(job: Job, value: object) -> None:
    config = train(
        loader={"name": "LoadImaged", "args": {"keys": "image", "reader": "NumpyReader", "allow_pickle": value}}
    )

    job.refuse(config, "train.loader.args.allow_pickle", {"P": True})


@pytest.mark.parametrize(
    ("component", "arg"),
    [
        (
            {
                "name": "DenseNet121",
                "args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "pretrained": True},
            },
            "pretrained",
        ),
        (
            {
                "name": "DenseNet121",
                "args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "pretrained": "/w.pt"},
            },
            "pretrained",
        ),
        ({"name": "EfficientNetBN", "args": {"model_name": "efficientnet-b0", "pretrained": 1}}, "pretrained"),
        (
            {
                "name": "FlexibleUNet",
                "args": {"in_channels": 1, "out_channels": 2, "backbone": "efficientnet-b0", "pretrained": "yes"},
            },
            "pretrained",
        ),
        ({"name": "TorchVisionFCModel", "args": {"pretrained": True}}, "pretrained"),
        ({"name": "TorchVisionFCModel", "args": {"weights": "DEFAULT"}}, "weights"),
        (
            {"name": "DenseNet121", "args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "download": True}},
            "download",
        ),
        (
            {"name": "SEResNet50", "args": {"spatial_dims": 2, "in_channels": 1, "num_classes": 2, "pretrained": [1]}},
            "pretrained",
        ),
        (
            {
                "name": "SupervisedEvaluator",
                "args": {"device": "cpu", "val_data_loader": [], "network": None, "compile": "{C}"},
            },
            "compile",
        ),
        (
            {
                "name": "SupervisedEvaluator",
                "args": {"device": "cpu", "val_data_loader": [], "network": None, "compile_kwargs": {"backend": "x"}},
            },
            "compile_kwargs",
        ),
        (
            {
                "name": "SupervisedEvaluator",
                "args": {"device": "cpu", "val_data_loader": [], "network": None, "amp_kwargs": {"dtype": "x"}},
            },
            "amp_kwargs",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else v["name"],
)
def test_switches_that_download_or_compile_are_refused(job: Job, component: dict, arg: str) -> None:
    job.refuse(train(net=component), f"train.net.args.{arg}", {"C": "true"})


# -- every way a path reaches a library ---------------------------------------------------------------------------


def saver(**args: object) -> dict:
    return train(saver={"name": "SaveImaged", "args": {"keys": "pred", **args}})


@pytest.mark.parametrize(
    ("config", "item"),
    [
        (saver(output_dir="{outside}"), "train.saver.args.output_dir"),
        (saver(output_dir="{MMAR_ROOT}/../escaped"), "train.saver.args.output_dir"),
        (saver(output_dir="~/escaped"), "train.saver.args.output_dir"),
        (saver(output_dir="eval"), "train.saver.args.output_dir"),  # the library resolves it against the cwd
        (saver(), "train.saver.args.output_dir"),  # the default, './'
        (saver(output_dir="{MMAR_ROOT}/eval", output_postfix="../../../escaped"), "train.saver.args.output_postfix"),
        (saver(output_dir="{MMAR_ROOT}/eval", output_ext="/../../escaped"), "train.saver.args.output_ext"),
        (
            saver(output_dir="{MMAR_ROOT}/eval", output_name_formatter="lambda m, s: {'subject': '/etc/x'}"),
            "train.saver.args.output_name_formatter",
        ),
        (
            saver(output_dir="{MMAR_ROOT}/eval", folder_layout={"name": "FolderLayout", "args": {"output_dir": "/"}}),
            "train.saver.args.folder_layout.name",
        ),
        (train(tb={"name": "TensorBoardStatsHandler", "args": {"log_dir": "{outside}"}}), "train.tb.args.log_dir"),
        (train(tb={"name": "TensorBoardStatsHandler", "args": {}}), "train.tb.args.log_dir"),  # './runs'
        (train(tb={"name": "TensorBoardImageHandler", "args": {"log_dir": "runs"}}), "train.tb.args.log_dir"),
        (train(c={"name": "ClassificationSaver", "args": {}}), "train.c.args.output_dir"),
        (
            train(c={"name": "ClassificationSaver", "args": {"output_dir": "{MMAR_ROOT}", "filename": "../x.csv"}}),
            "train.c.args.filename",
        ),
        (
            train(ckpt={"name": "CheckpointSaver", "args": {"save_dir": "{outside}", "save_dict": {}}}),
            "train.ckpt.args.save_dir",
        ),
        (
            train(
                ckpt={
                    "name": "CheckpointSaver",
                    "args": {"save_dir": "{MMAR_ROOT}", "save_dict": {}, "final_filename": "../../f.pt"},
                }
            ),
            "train.ckpt.args.final_filename",
        ),
        (
            train(
                ckpt={
                    "name": "CheckpointSaver",
                    "args": {"save_dir": "{MMAR_ROOT}", "save_dict": {"../../m": "x"}, "save_interval": 1},
                }
            ),
            "train.ckpt.args.save_dict.../../m",
        ),
        (train(m={"name": "MetricsSaver", "args": {"save_dir": "{outside}"}}), "train.m.args.save_dir"),
        (train(m={"name": "MetricsSaver", "args": {"save_dir": "../escaped"}}), "train.m.args.save_dir"),
        (
            train(ds={"name": "PersistentDataset", "args": {"data": [], "transform": None, "cache_dir": "{outside}"}}),
            "train.ds.args.cache_dir",
        ),
        (
            train(
                ds={
                    "name": "CacheNTransDataset",
                    "args": {"data": [], "transform": None, "cache_n_trans": 1, "cache_dir": "~/c"},
                }
            ),
            "train.ds.args.cache_dir",
        ),
        (
            train(l={"name": "CheckpointLoader", "args": {"load_path": "/etc/passwd", "load_dict": {}}}),
            "train.l.args.load_path",
        ),
        (train(csv={"name": "CSVDataset", "args": {"src": ["{outside}/x.csv"]}}), "train.csv.args.src[0]"),
        (
            train(l={"name": "LoadImaged", "args": {"keys": "image", "filename_or_obj": "/etc/x"}}),
            "train.l.args.filename_or_obj",
        ),
        (
            train(h={"name": "CheckpointSaver", "args": {"save_dir": "{MMAR_ROOT}", "save_dict": "@d"}}, d={"../x": 1}),
            "train.h.args.save_dict.../x",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_way_a_path_reaches_a_library_is_judged_where_the_library_would_write(
    job: Job, config: dict, item: str
) -> None:
    config = json.loads(json.dumps(config).replace("{outside}", str(job.root.parent / "outside")))

    job.refuse(config, item)


def test_a_symlink_in_the_job_leading_out_is_followed(job: Job) -> None:
    (job.root.parent / "outside").mkdir()
    (job.root / "out").symlink_to(job.root.parent / "outside")
    job.write(saver(output_dir="{MMAR_ROOT}/out"))

    with pytest.raises(ConfigError, match=r"train.saver.args.output_dir: '.*/out' is outside this MMAR's folder"):
        build_components(load_config(job.root, TRAIN), code_policy=CodePolicy("restricted", (str(job.data),)))
    assert list((job.root.parent / "outside").iterdir()) == []


# -- nothing is imported before the policy allowed it ------------------------------------------------------------


@pytest.fixture
def side_effect_module(tmp_path: Path, job: Job):
    """A module on sys.path (outside any custom/ folder) that writes the marker when it is imported."""
    folder = tmp_path / "elsewhere_on_sys_path"
    folder.mkdir()
    (folder / "attack_import_probe.py").write_text(
        f"open({str(job.marker)!r}, 'w').close()\nclass Trainer:\n    def __init__(self, **kwargs):\n        pass\n"
    )
    sys.path.insert(0, str(folder))
    yield "attack_import_probe"
    sys.path.remove(str(folder))
    sys.modules.pop("attack_import_probe", None)


def test_a_path_to_a_module_outside_the_catalog_is_not_imported(job: Job, side_effect_module: str) -> None:
    job.refuse(train(trainer={"path": f"{side_effect_module}.Trainer", "args": {}}), "train.trainer.path")

    assert side_effect_module not in sys.modules


def test_reading_a_clara40_config_does_not_import_its_classes_before_the_policy(
    job: Job, side_effect_module: str
) -> None:
    clara40 = train(model=network("PRELU"), trainer={"path": f"{side_effect_module}.Trainer", "args": {}})
    job.write(clara40)

    loaded = load_config(job.root, TRAIN)  # the Clara 4.0 translation reads the trainer's signature
    assert not job.marker.exists() and side_effect_module not in sys.modules
    assert loaded.config["train"]["trainer"]["args"]["network"] == "@model"
    job.refuse(clara40, "train.trainer.path")


# -- the four cases of issue 24 ------------------------------------------------------------------------------


def test_issue_24_a_reader_named_os_system_runs_a_command_under_the_full_policy_only(job: Job) -> None:
    job.refuse(train(pwn=loader(job)), "train.pwn.args.reader")

    job.build(train(pwn=loader(job)), policy="full")
    assert job.marker.exists()


def test_issue_24_a_saver_rewriting_its_output_path_onto_the_sites_data_is_refused(job: Job) -> None:
    import nibabel
    import numpy

    case = job.data / "case_001.nii.gz"
    nibabel.save(nibabel.Nifti1Image(numpy.zeros((4, 4, 4), numpy.float32), numpy.eye(4)), case)
    before = case.read_bytes()
    overwrite = train(
        load={"name": "LoadImaged", "args": {"keys": "image"}},
        save={
            "name": "SaveImaged",
            "args": {
                "keys": "image",
                "output_dir": "{MMAR_ROOT}/out",
                "output_postfix": "",
                "data_root_dir": "{MMAR_ROOT}/out",
                "separate_folder": False,
            },
        },
    )
    job.refuse(overwrite, "train.save.args.data_root_dir")

    resolver, _, _ = job.build(overwrite, policy="full")
    item = resolver.get("load", "train")({"image": str(case)})
    item["image"] = item["image"] + 1
    resolver.get("save", "train")(item)
    assert case.read_bytes() != before  # the payload is real: the site's case was overwritten


class _Owns:
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_issue_24_a_cache_file_the_job_ships_is_unpickled_only_under_the_full_policy(job: Job) -> None:
    import torch
    from monai.data.utils import pickle_hashing

    attack = persistent(weights_only="")
    job.refuse(attack, "train.dataset.args.weights_only")

    (job.root / "cache").mkdir()
    _Owns.marker = str(job.marker)
    name = pickle_hashing({"image": "x"}).decode()
    torch.save({"x": _Owns()}, job.root / "cache" / f"{name}.pt", pickle_module=pickle)
    resolver, _, _ = job.build(attack, policy="full")
    resolver.get("dataset", "train")[0]
    assert job.marker.exists()
    os.remove(job.marker)
