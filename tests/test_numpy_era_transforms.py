"""Custom transforms of Clara 4.1 configs written for MONAI 0.8 and earlier (numpy arrays in and out) run unchanged:
tried on tensors, and run on numpy arrays, from then on, once they fail there the way numpy-era code fails."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from clara_fl.components.legacy_transform import NumpyEraFallback, numpy_era_failure
from tests.conftest import tiny_set

FALLBACK_LOGGER = "clara_fl.components.legacy_transform"

NUMPY_ERA_CODE = '''"""A transform written for MONAI 0.8: LoadImaged gave numpy arrays, and so did this."""

import numpy as np


class ClipAbove:
    """Clips intensities above ``upper``, keeping the image's dtype."""

    def __init__(self, keys, upper):
        self.keys = [keys] if isinstance(keys, str) else keys
        self.upper = upper

    def __call__(self, data):
        d = dict(data)
        for key in self.keys:
            d[key] = np.clip(d[key], None, self.upper).astype(d[key].dtype)
        return d
'''


def image(*shape: int) -> MetaTensor:
    return MetaTensor(
        torch.linspace(0, 1, int(np.prod(shape))).reshape(shape), meta={"filename_or_obj": "case_1.nii.gz"}
    )


class NumpyEraClip:
    """``ClipAbove`` in this module: fails on tensors (numpy refuses torch's dtype), works on numpy arrays."""

    def __call__(self, data: dict) -> dict:
        return {**data, "image": np.clip(data["image"], None, 0.5).astype(data["image"].dtype)}


def fallback_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == FALLBACK_LOGGER]


# -- which failures are numpy-era ------------------------------------------------------------------


def _raised(code) -> BaseException:
    with pytest.raises((AttributeError, TypeError)) as raised:
        code(image(1, 4, 4))
    return raised.value


@pytest.mark.parametrize(
    "numpy_era_code",
    [
        pytest.param(lambda img: np.flip(img, 1).astype(img.dtype), id="ndarray.astype(torch dtype)"),
        pytest.param(lambda img: img.copy(), id="tensor.copy()"),
        pytest.param(lambda img: img.dtype.kind, id="torch dtype.kind"),
        pytest.param(lambda img: np.zeros(img.shape, dtype=img.dtype), id="numpy given a torch dtype"),
        pytest.param(
            lambda img: img.__setitem__(img > 0.5, np.zeros(int((img > 0.5).sum()))), id="ndarray into tensor"
        ),
        pytest.param(lambda img: img.mean(keepdims=True), id="numpy keyword to torch"),
    ],
)
def test_failures_of_code_written_for_numpy_arrays_are_numpy_era(numpy_era_code) -> None:
    error = _raised(numpy_era_code)

    assert numpy_era_failure(error)


@pytest.mark.parametrize(
    "other_code",
    [
        pytest.param(lambda img: img.no_such_attribute, id="an attribute nothing has"),
        pytest.param(lambda img: img + "text", id="a type error of another kind"),
    ],
)
def test_other_failures_are_not_numpy_era(other_code) -> None:
    error = _raised(other_code)

    assert not numpy_era_failure(error)


# -- the fallback around one transform --------------------------------------------------------------


def test_a_transform_that_works_on_tensors_runs_on_them() -> None:
    transform = NumpyEraFallback(lambda d: {**d, "image": d["image"] * 2}, "train.pre_transforms[4] (Double)")

    out = transform({"image": image(1, 2, 2)})

    assert isinstance(out["image"], MetaTensor) and not transform.numpy_era


def test_a_numpy_era_failure_runs_once_more_on_numpy_arrays_and_always_after(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=FALLBACK_LOGGER)
    transform = NumpyEraFallback(NumpyEraClip(), "config/config_train.json: train.pre_transforms[4] (NumpyEraClip)")

    first = transform({"image": image(1, 2, 2)})
    second = transform({"image": image(1, 2, 2)})

    for out in (first, second):
        assert isinstance(out["image"], MetaTensor) and float(out["image"].max()) == 0.5
        assert out["image"].meta["filename_or_obj"] == "case_1.nii.gz"
    [message] = fallback_messages(caplog)
    assert message.startswith(
        "config/config_train.json: train.pre_transforms[4] (NumpyEraClip): fails on tensors the way code written "
        "for MONAI 0.8 and earlier does (TypeError: Cannot interpret 'torch.float32' as a data type)"
    )


def test_a_numpy_array_returned_for_a_tensor_is_numpy_era_too(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=FALLBACK_LOGGER)
    transform = NumpyEraFallback(lambda d: {**d, "image": np.flip(d["image"], 1)}, "pre_transforms[1] (Flip)")

    out = transform({"image": image(1, 2, 2)})

    assert isinstance(out["image"], MetaTensor) and out["image"].meta["filename_or_obj"] == "case_1.nii.gz"
    assert "it returned a numpy array for 'image', a tensor" in fallback_messages(caplog)[0]


def test_a_failure_of_another_kind_is_raised_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=FALLBACK_LOGGER)
    transform = NumpyEraFallback(lambda d: d["image"].no_such_attribute, "pre_transforms[1] (Broken)")

    with pytest.raises(AttributeError, match="no_such_attribute"):
        transform({"image": image(1, 2, 2)})

    assert not transform.numpy_era and fallback_messages(caplog) == []


def test_monai_sees_the_fallback_as_the_transform_it_runs() -> None:
    from monai.transforms import Compose, RandFlipd, Randomizable

    transform = NumpyEraFallback(RandFlipd(keys="image", prob=0.5), "pre_transforms[1] (RandFlipd)")
    reference = RandFlipd(keys="image", prob=0.5)

    Compose([transform]).set_random_state(seed=7)
    Compose([reference]).set_random_state(seed=7)

    assert isinstance(transform, Randomizable)
    assert transform.R.randint(10**6) == reference.R.randint(10**6)


def test_copies_of_a_switched_transform_stay_switched() -> None:
    transform = NumpyEraFallback(NumpyEraClip(), "pre_transforms[4] (NumpyEraClip)")
    transform({"image": image(1, 2, 2)})

    copies = [copy.deepcopy(transform), pickle.loads(pickle.dumps(transform))]

    assert transform.numpy_era and all(type(c) is NumpyEraFallback and c.numpy_era for c in copies)


# -- in a Clara 4.1 MMAR ---------------------------------------------------------------------------


@pytest.fixture
def numpy_era_spleen(spleen_mmar: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """The shipped spleen MMAR with a numpy-era custom transform after CropForegroundd in training and validation."""
    module = f"numpy_era_{uuid.uuid4().hex}"
    (spleen_mmar / "custom").mkdir()
    (spleen_mmar / "custom" / f"{module}.py").write_text(NUMPY_ERA_CODE)
    clip = {"path": f"{module}.ClipAbove", "args": {"keys": "image", "upper": 0.9}}
    train_file = spleen_mmar / "config" / "config_train.json"
    train = json.loads(train_file.read_text())
    train["train"]["pre_transforms"].insert(4, clip)
    train["validate"]["pre_transforms"].insert(4, {"ref": "ClipAbove"})
    train_file.write_text(json.dumps(train))
    validation_file = spleen_mmar / "config" / "config_validation.json"
    validation = json.loads(validation_file.read_text())
    validation["pre_transforms"].insert(4, clip)
    validation_file.write_text(json.dumps(validation))
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield spleen_mmar, module
    sys.modules.pop(module, None)


def test_a_clara41_mmar_with_a_numpy_era_custom_transform_trains_and_validates_unchanged(
    numpy_era_spleen: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    from clara_fl.cli import main

    mmar, _ = numpy_era_spleen
    caplog.set_level(logging.INFO, logger=FALLBACK_LOGGER)
    from_checkpoint = ["dont_load_ts_model=True", "dont_load_ckpt_model=False"]

    trained = main(["train", "-m", str(mmar), "--set", *tiny_set()])
    validated = main(["validate", "-m", str(mmar), "--set", *tiny_set(), *from_checkpoint])

    assert (trained, validated) == (0, 0)
    assert (mmar / "eval" / "metrics.csv").is_file()
    switched = [m.split(": fails on tensors")[0] for m in fallback_messages(caplog)]
    assert switched == [
        "config/config_train.json: train.pre_transforms[4] (ClipAbove)",
        "config/config_validation.json: pre_transforms[4] (ClipAbove)",
    ]


def test_a_monai_transform_failing_the_same_way_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    from clara_fl.config.context import BuildContext
    from clara_fl.config.resolver import ConfigResolver
    from clara_fl.workflows.runtime import with_runtime

    caplog.set_level(logging.INFO, logger=FALLBACK_LOGGER)
    config = {"pre_transforms": [{"name": "Lambdad", "args": {"keys": "image", "func": "lambda x: x.copy()"}}]}
    transforms = ConfigResolver(config, context=with_runtime(BuildContext())).get("pre_transforms")

    with pytest.raises(RuntimeError) as raised:
        transforms({"image": image(1, 2, 2)})

    assert numpy_era_failure(raised.value.__cause__)  # type: ignore[arg-type]
    assert fallback_messages(caplog) == []
