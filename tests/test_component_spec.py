"""One component grammar (:mod:`clara_fl.config.specs`): a table of tricky entries, what ``parse_component`` and
``is_model_entry`` say each is, and the resolver, the bundle translator, the Clara 4.0 wiring and its detector
reading each the same way."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clara_fl.config.errors import ConfigError
from clara_fl.config.specs import (
    MODEL_FILE_KEYS,
    ComponentSpec,
    config_sections,
    is_component,
    is_disabled,
    is_model_entry,
    parse_component,
)

UNET = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [2, 4], "strides": [2]}
FLIP = {"keys": "image", "prob": 0.5, "spatial_axis": 0}
LOAD = {"keys": "image"}
NETWORK = {"name": "UNet", "args": UNET}
FILE = "config/config_validation.json"


@dataclass(frozen=True)
class Entry:
    """A section item (``value`` under ``key``) and what the component grammar says it is."""

    key: str
    value: Any
    specs: dict[str, ComponentSpec | None] = field(default_factory=dict)  # JSON path -> parse_component there
    error: str | None = None  # the JSON path named by parse_component's ConfigError
    model_entry: bool = False
    clara40_value: Any = None  # what Clara 4.0 read it as, where Clara 4.1 refuses it


TABLE = {
    "name with alias": Entry(
        "item", {"name": "UNet#net", "args": UNET}, {"item": ComponentSpec("item", "UNet", None, "net", UNET)}
    ),
    "dotted path": Entry(
        "item",
        {"path": "monai.networks.nets.UNet", "args": UNET},
        {"item": ComponentSpec("item", None, "monai.networks.nets.UNet", None, UNET)},
    ),
    "disabled": Entry(
        "item",
        {"name": "RandFlipd", "args": FLIP, "disabled": True},
        {"item": ComponentSpec("item", "RandFlipd", None, None, FLIP, disabled=True)},
    ),
    "disabled by a boolean word": Entry(
        "item",
        {"name": "RandFlipd", "args": FLIP, "disabled": "True"},
        {"item": ComponentSpec("item", "RandFlipd", None, None, FLIP, disabled=True)},
    ),
    "rank": Entry(
        "item",
        {"name": "RandFlipd", "args": FLIP, "rank": 0},
        {"item": ComponentSpec("item", "RandFlipd", None, None, FLIP, rank=0)},
    ),
    "network then model file": Entry(
        "model",
        [NETWORK, {"ckpt_path": "x.pt"}],
        {"model[0]": ComponentSpec("model[0]", "UNet", None, None, UNET), "model[1]": None},
        model_entry=True,
    ),
    "model file then network": Entry(
        "model",
        [{"ckpt_path": "x.pt"}, NETWORK],
        {"model[0]": None, "model[1]": ComponentSpec("model[1]", "UNet", None, None, UNET)},
        model_entry=True,
    ),
    "disabled model file then network": Entry(
        "model",
        [{"ts_path": "x.ts", "disabled": True}, NETWORK],
        {"model[0]": None, "model[1]": ComponentSpec("model[1]", "UNet", None, None, UNET)},
        model_entry=True,
    ),
    "model list of only a file": Entry("model", [{"ckpt_path": "x.pt"}], {"model[0]": None}, model_entry=True),
    "name and path": Entry(
        "item",
        {"name": "UNet", "path": "monai.networks.nets.UNet", "args": UNET},
        error="item",
        clara40_value={"path": "monai.networks.nets.UNet", "args": UNET},
    ),
    "args as a list": Entry("item", {"name": "UNet", "args": [2, 1, 1]}, error="item.args"),
    "alias with no class": Entry("item", {"name": "#net", "args": UNET}, error="item.name"),
    "rank that is not an integer": Entry(
        "item", {"name": "RandFlipd", "args": FLIP, "rank": "first"}, error="item.rank"
    ),
    "component inside args": Entry(
        "item",
        {"name": "DataLoader", "args": {"dataset": {"name": "Dataset", "args": {"data": []}}, "batch_size": 1}},
        {
            "item": ComponentSpec(
                "item",
                "DataLoader",
                None,
                None,
                {"dataset": {"name": "Dataset", "args": {"data": []}}, "batch_size": 1},
            ),
            "item.args.dataset": ComponentSpec("item.args.dataset", "Dataset", None, None, {"data": []}),
        },
    ),
    "transform list items with aliases": Entry(
        "pre_transforms",
        [{"name": "LoadImaged#loader", "args": LOAD}, {"name": "RandFlipd#flip", "args": FLIP}],
        {
            "pre_transforms[0]": ComponentSpec("pre_transforms[0]", "LoadImaged", None, "loader", LOAD),
            "pre_transforms[1]": ComponentSpec("pre_transforms[1]", "RandFlipd", None, "flip", FLIP),
        },
    ),
}
ENTRIES = [pytest.param(entry, id=name) for name, entry in TABLE.items()]
MODEL_ENTRIES = [pytest.param(entry, id=name) for name, entry in TABLE.items() if entry.model_entry]
TRANSFORMS = TABLE["transform list items with aliases"].value


def placed(key: str, value: Any) -> Iterator[tuple[str, Any]]:
    """(JSON path, item) of a section item, of its list's items, and of the components in their arguments."""
    items = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(key, value)]
    for path, item in items:
        yield path, item
        args = item.get("args") if is_component(item) else None
        for arg, nested in args.items() if isinstance(args, dict) else ():
            if is_component(nested):
                yield f"{path}.args.{arg}", nested


def reading(spec: ComponentSpec | None) -> tuple:
    """What a consumer makes of one parsed item: disabled, or a component of a class with components in its args."""
    if spec is None:
        return ("not a component",)
    if spec.disabled:
        return ("disabled",)
    nested = (
        (arg, inner.class_name)
        for arg, value in spec.args.items()
        if (inner := parse_component(value, f"{spec.json_path}.args.{arg}")) is not None
    )
    return ("component", spec.class_name, tuple(sorted(nested)))


def grammar_reading(key: str, value: Any) -> Any:
    """What the grammar says a section item is: a model entry, a malformed spec (the JSON path it names), a
    component's :func:`reading`, or a list of those."""
    if key == "model" and is_model_entry(value):
        return ("model entry",)
    try:
        if isinstance(value, list):
            return [reading(parse_component(item, f"{key}[{i}]")) for i, item in enumerate(value)]
        return reading(parse_component(value, key))
    except ConfigError as e:
        return ("error", e.path)


def is_a_component(value: Any) -> bool:
    """Whether the grammar takes ``value`` for a component, well-formed or not."""
    try:
        return parse_component(value, "evaluator") is not None
    except ConfigError:
        return True


# -- the grammar ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_parse_component_reads_each_entry(entry: Entry) -> None:
    if entry.error is not None:
        with pytest.raises(ConfigError) as info:
            [parse_component(item, path) for path, item in placed(entry.key, entry.value)]
        assert info.value.path == entry.error
        return

    parsed = {path: parse_component(item, path) for path, item in placed(entry.key, entry.value)}

    assert parsed == entry.specs


@pytest.mark.parametrize("entry", ENTRIES)
def test_is_model_entry_takes_file_entries_with_or_without_network_definitions_in_either_order(entry: Entry) -> None:
    assert is_model_entry(entry.value) is entry.model_entry


def test_a_model_list_of_only_a_network_is_no_model_entry() -> None:
    assert not is_model_entry([NETWORK])


def test_a_flag_still_written_as_a_variable_is_kept_as_the_variable() -> None:
    spec = parse_component({"name": "RandFlipd", "disabled": "{skip}", "rank": "{rank}"}, "item")

    assert spec is not None
    assert (spec.disabled, spec.rank) == (False, None)
    assert spec.placeholders == {"disabled": "{skip}", "rank": "{rank}"}


def test_a_disabled_flag_that_is_no_boolean_names_its_json_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_component({"name": "RandFlipd", "disabled": "maybe"}, "train.pre_transforms[3]")

    assert (info.value.path, info.value.message) == (
        "train.pre_transforms[3].disabled",
        "'disabled' must be true or false, got 'maybe'",
    )


def test_the_spec_names_its_class_without_module_or_alias() -> None:
    spec = parse_component({"path": "monai.networks.nets.UNet#net"}, "train.model")

    assert spec is not None
    assert (spec.key, spec.target, spec.class_name, spec.alias) == ("path", "monai.networks.nets.UNet", "UNet", "net")


def test_a_train_config_has_train_validate_and_its_other_top_level_objects_as_sections() -> None:
    config = {"epochs": 2, "determinism": {"random_seed": 0}, "train": {}, "validate": {}, "extra": {"name": "X"}}

    sections = config_sections(config, skip={"determinism"})

    assert list(sections) == ["train", "validate", ""]
    assert dict(sections[""]) == {"extra": {"name": "X"}}


def test_a_flat_config_is_one_section_that_is_the_config_itself() -> None:
    config = {"amp": True, "evaluator": {"name": "SupervisedEvaluator"}}

    assert config_sections(config)[""] is config


# -- the resolver ---------------------------------------------------------------------------------------


class ModelFiles:
    """The build runtime for these tests: a model file loads as the name of the key that named it."""

    search_modules: tuple[str, ...] = ()

    def adapt_arguments(self, target: Any, args: dict, path: str, context: Any, dry_run: bool) -> dict:
        return args

    def place(self, name: str, built: Any, context: Any) -> Any:
        return built

    def load_datalist(self, list_path: str, key: str, base_dir: str | None) -> list:
        raise AssertionError("no datalist in these entries")

    def load_model(self, kind: str, file: str, context: Any) -> Any:
        return kind

    def custom_transform(self, transform: Any, where: str, context: Any) -> Any:
        return transform


def resolver_build(key: str, value: Any, mmar: Path) -> Any:
    from clara_fl.config.context import BuildContext
    from clara_fl.config.resolver import ConfigResolver

    (mmar / "x.pt").write_bytes(b"")
    context = BuildContext(mmar_root=str(mmar), runtime=ModelFiles())
    return ConfigResolver({key: copy.deepcopy(value)}, FILE, context).get(key)


def built_reading(built: Any, written: Any) -> tuple:
    if built is None:
        return ("disabled",)
    args = written.get("args", {})
    nested = ((arg, type(getattr(built, arg)).__name__) for arg in args if is_component(args[arg]))
    return ("component", type(built).__name__, tuple(sorted(nested)))


def resolver_reading(key: str, value: Any, mmar: Path) -> Any:
    from monai.transforms import Compose

    try:
        built = resolver_build(key, value, mmar)
    except ConfigError as e:
        return ("error", e.path)
    if isinstance(built, Compose):
        built = list(built.transforms)
    if isinstance(value, list) and not isinstance(built, list):
        return ("model entry",)  # one model from a list of entries
    if isinstance(built, list):
        return [built_reading(b, w) for b, w in zip(built, value, strict=True)]
    return built_reading(built, value)


@pytest.mark.parametrize("entry", ENTRIES)
def test_the_resolver_reads_each_entry_as_the_grammar_does(entry: Entry, tmp_path: Path) -> None:
    assert resolver_reading(entry.key, entry.value, tmp_path) == grammar_reading(entry.key, entry.value)


@pytest.mark.parametrize("entry", MODEL_ENTRIES)
def test_the_resolver_takes_the_first_enabled_model_entry(entry: Entry, tmp_path: Path) -> None:
    first = next(item for i, item in enumerate(entry.value) if not is_disabled(item, f"model[{i}]"))
    spec = parse_component(first, "model")
    expected = spec.class_name if spec is not None else next(k for k in MODEL_FILE_KEYS if k in first)

    built = resolver_build("model", entry.value, tmp_path)

    assert (built if isinstance(built, str) else type(built).__name__) == expected


@pytest.mark.parametrize("index", range(len(TRANSFORMS)))
def test_a_validate_ref_to_an_alias_is_the_train_transform_for_the_resolver(index: int) -> None:
    from clara_fl.config.resolver import ConfigResolver

    spec = parse_component(TRANSFORMS[index], "train.pre_transforms")
    assert spec is not None and spec.alias is not None
    config = {"train": {"pre_transforms": TRANSFORMS}, "validate": {"pre_transforms": [{"ref": spec.alias}]}}
    resolver = ConfigResolver(config, FILE)

    validate = resolver.get("pre_transforms", "validate")

    assert validate.transforms[0] is resolver.get("pre_transforms", "train").transforms[index]


# -- the bundle translator ------------------------------------------------------------------------------


def translator(sections: dict[str, Any]) -> Any:
    from clara_fl.bundle.translate import ClaraConfig, _Translator
    from clara_fl.bundle.variables import BundleVariables

    source = ClaraConfig({}, BundleVariables({}, "/mmar", FILE), FILE)
    return _Translator(source, sections, {name: name for name in sections})


def bundle_reading(item: dict[str, Any]) -> tuple:
    if "_target_" not in item:
        return ("not a component",)
    if item.get("_disabled_") is True:
        return ("disabled",)
    nested = ((k, v["_target_"].rsplit(".", 1)[-1]) for k, v in item.items() if isinstance(v, dict) and "_target_" in v)
    return ("component", item["_target_"].rsplit(".", 1)[-1], tuple(sorted(nested)))


def translator_reading(key: str, value: Any) -> Any:
    written = copy.deepcopy(value)
    translating = translator({"": {key: written}})
    try:
        translating.section_item("", key, written)
    except ConfigError as e:
        return ("error", e.path)
    item = translating.items.get("network_def" if key == "model" else key)
    if item is None:
        return ("model entry",)  # the network comes from the train config, its weights from models/model.pt
    return [bundle_reading(i) for i in item] if isinstance(item, list) else bundle_reading(item)


@pytest.mark.parametrize("entry", ENTRIES)
def test_the_bundle_translator_reads_each_entry_as_the_grammar_does(entry: Entry) -> None:
    assert translator_reading(entry.key, entry.value) == grammar_reading(entry.key, entry.value)


@pytest.mark.parametrize("index", range(len(TRANSFORMS)))
def test_a_validate_ref_to_an_alias_is_the_train_transform_for_the_translator(index: int) -> None:
    spec = parse_component(TRANSFORMS[index], "train.pre_transforms")
    assert spec is not None and spec.alias is not None
    translating = translator({"train": {"pre_transforms": TRANSFORMS}, "validate": {}})

    ref = translating.value({"ref": spec.alias}, "validate.pre_transforms[0]", "validate")

    assert ref == f"@train#pre_transforms#{index}"


# -- Clara 4.0: wiring and detection --------------------------------------------------------------------


def wiring_reading(key: str, value: Any) -> Any:
    from clara_fl.config.clara40.wiring import wire_section
    from clara_fl.config.locator import locate_component

    section = {key: copy.deepcopy(value)}
    try:
        wire_section(section, "", {key}, {}, locate_component, [])
    except ConfigError as e:
        return ("error", e.path)
    return grammar_reading(key, section[key])


@pytest.mark.parametrize("entry", ENTRIES)
def test_the_clara40_wiring_reads_each_entry_as_the_grammar_reads_what_clara40_meant(entry: Entry) -> None:
    meant = entry.clara40_value if entry.clara40_value is not None else entry.value

    assert wiring_reading(entry.key, entry.value) == grammar_reading(entry.key, meant)


@pytest.mark.parametrize("entry", ENTRIES)
def test_the_clara40_detector_takes_for_an_engine_what_the_grammar_takes_for_a_component(entry: Entry) -> None:
    from clara_fl.config.clara40 import is_clara40

    assert is_clara40({"evaluator": copy.deepcopy(entry.value)}) is is_a_component(entry.value)
