"""Fuzzing configs: whatever is wrong with a config, the user gets a ConfigError that says where.

Hypothesis mutates the shipped spleen config (types, keys, references, variables, names, JSON text)
and runs the full check that precedes every build. The only acceptable outcomes: the config passes,
or a ConfigError naming the file and a JSON path (or line/column) — never another exception, and
nothing written.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clara_fl.config.errors import ConfigError
from clara_fl.config.mmar import load_config
from clara_fl.config.resolver import BuildContext
from clara_fl.workflows.build import check_config
from tests.conftest import SPLEEN_MMAR, copy_mmar

BASE = json.loads((SPLEEN_MMAR / "config" / "config_train.json").read_text())
CLARA40_MMAR = Path(__file__).parent / "clara40_mmar"
BASE40 = json.loads((CLARA40_MMAR / "config" / "config_train.json").read_text())
CONFIG = "config/config_train.json"


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += paths(v, prefix + (i,))
    return found


ALL_PATHS = paths(BASE)
ALL_PATHS40 = paths(BASE40)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5,
)
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)


def parent_and_key(config: Any, path: tuple) -> tuple[Any, Any]:
    node = config
    for part in path[:-1]:
        node = node[part]
    return node, path[-1]


CLARA40_SHAPES = {
    "metrics": st.sampled_from(
        [
            [],
            {},
            [1],
            [{"name": "Accuracy", "is_key_metric": "maybe"}],
            [{"name": "Accuracy"}, {"name": "MeanDice", "is_key_metric": True}],
        ]
    ),
    "save_dict": st.sampled_from([["model", 3], ["nothing"], [], ["train_conf"], "model"]),
    "output_transform": st.sampled_from(
        ["lambda x: x['loss']", "lambda x: x[0]", "lambda: 1", "lambda x, y: x['a']", "lambda x: (x['a'], x)"]
    ),
    "search": st.sampled_from([[{"args": ["lr"], "domain": "lr", "type": "float", "targets": [0.1, 1]}], 3]),
    "apply": st.sampled_from([["A", "B"], None]),
    "path": st.sampled_from(["monai.losses.DiceLoss", "no.such.Module", ""]),
    "handlers": st.sampled_from(
        [
            [{"name": "TransformInverter", "args": 3}],
            [{"name": "SegmentationSaver", "args": {"output_transform": 3}}],
            [{"name": "TransformInverter", "args": {"postfix": "inv", "output_keys": 3}}],
        ]
    ),
}


@st.composite
def clara40_mutation(draw: st.DrawFn, config: dict) -> None:
    """A Clara 4.0 construct given a shape it may or may not accept, somewhere in a section."""
    section = config[draw(st.sampled_from(["train", "validate"]))]
    key = draw(st.sampled_from(sorted(CLARA40_SHAPES)))
    # a copy: sampled_from hands out the one shared object, which later mutations of the config would change for
    # every later example (hypothesis then fails the test as an inconsistent strategy)
    value = copy.deepcopy(draw(CLARA40_SHAPES[key]))
    if key in ("metrics", "handlers"):
        section[key] = value
        return
    components = [v for v in section.values() if isinstance(v, dict)] + [
        item for v in section.values() if isinstance(v, list) for item in v if isinstance(item, dict)
    ]
    target = draw(st.sampled_from(components)) if components else section
    if key in ("save_dict", "output_transform"):
        target.setdefault("args", {})[key] = value
    else:
        target[key] = value


@st.composite
def mutated_configs(draw: st.DrawFn, base: dict = BASE, clara40: bool = False) -> str:
    config = copy.deepcopy(base)
    if clara40:
        for _ in range(draw(st.integers(0, 2))):
            draw(clara40_mutation(config))
    for _ in range(draw(st.integers(0 if clara40 else 1, 3))):
        path = draw(st.sampled_from(ALL_PATHS40 if clara40 else ALL_PATHS))
        try:
            parent, key = parent_and_key(config, path)
            current = parent[key]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this place
        if not isinstance(parent, (dict, list)):
            continue  # an earlier mutation turned this place into a string (indexable, not assignable)
        kind = draw(st.sampled_from(["replace", "delete", "rename", "reference", "variable", "name", "code"]))
        if kind == "replace":
            parent[key] = draw(JSON_VALUES)
        elif kind == "delete":
            del parent[key]
        elif kind == "rename" and isinstance(parent, dict):
            parent[draw(WORDS)] = parent.pop(key)
        elif kind == "reference":
            parent[key] = "@" + draw(WORDS)
        elif kind == "variable":
            parent[key] = "{" + draw(WORDS) + "}"
        elif kind == "name" and isinstance(current, dict):
            current["name"] = draw(WORDS)
        elif kind == "code":
            parent[key] = draw(
                st.sampled_from(["#", "#@", "#1/", "lambda", "lambda x:", "#@model.", "#@" + draw(WORDS) + ".x()"])
            )
    text = json.dumps(config, indent=1)
    if draw(st.integers(0, 9)) == 0:  # now and then, broken JSON text
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + text[at + 1 :]
    return text


@pytest.fixture(scope="module")
def fuzz_mmar(tmp_path_factory: pytest.TempPathFactory, synthetic_data) -> Path:
    return copy_mmar(SPLEEN_MMAR, tmp_path_factory.mktemp("fuzz") / "mmar", synthetic_data.root)


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
@given(text=mutated_configs())
def test_a_mutated_config_passes_or_fails_with_a_located_config_error(fuzz_mmar: Path, text: str) -> None:
    (fuzz_mmar / CONFIG).write_text(text)
    before = sorted(p.name for p in fuzz_mmar.iterdir())
    try:
        check_config(
            load_config(fuzz_mmar, CONFIG, overrides={"roi_size": [16, 16, 16]}), BuildContext(mmar_root=str(fuzz_mmar))
        )
    except ConfigError as e:
        message = str(e)
        assert e.file, message
        assert e.path or "line" in message, message
    assert sorted(p.name for p in fuzz_mmar.iterdir()) == before  # nothing written


@pytest.fixture(scope="module")
def fuzz_mmar40(tmp_path_factory: pytest.TempPathFactory, synthetic_data) -> Path:
    return copy_mmar(CLARA40_MMAR, tmp_path_factory.mktemp("fuzz40") / "mmar", synthetic_data.root)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
@given(text=mutated_configs(BASE40, clara40=True))
def test_a_mutated_clara40_config_passes_or_fails_with_a_located_config_error(fuzz_mmar40: Path, text: str) -> None:
    (fuzz_mmar40 / CONFIG).write_text(text)
    before = sorted(p.name for p in fuzz_mmar40.iterdir())
    try:
        check_config(load_config(fuzz_mmar40, CONFIG), BuildContext(mmar_root=str(fuzz_mmar40)))
    except ConfigError as e:
        message = str(e)
        assert e.file, message
        assert e.path or "line" in message, message
    assert sorted(p.name for p in fuzz_mmar40.iterdir()) == before  # nothing written
