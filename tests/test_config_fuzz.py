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
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5,
)
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)


def parent_and_key(config: Any, path: tuple) -> tuple[Any, Any]:
    node = config
    for part in path[:-1]:
        node = node[part]
    return node, path[-1]


@st.composite
def mutated_configs(draw: st.DrawFn) -> str:
    config = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        try:
            parent, key = parent_and_key(config, path)
            current = parent[key]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this place
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
            parent[key] = draw(st.sampled_from(["#", "#@", "#1/", "lambda", "lambda x:", "#@model.", "#@" + draw(WORDS) + ".x()"]))
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
        check_config(load_config(fuzz_mmar, CONFIG, overrides={"roi_size": [16, 16, 16]}), BuildContext(mmar_root=str(fuzz_mmar)))
    except ConfigError as e:
        message = str(e)
        assert e.file, message
        assert e.path or "line" in message, message
    assert sorted(p.name for p in fuzz_mmar.iterdir()) == before  # nothing written
