"""Removed MONAI handlers move into post_transforms (clara_fl.config.removed_handlers); which class a handler
names is read by the component grammar (clara_fl.config.specs): a dotted ``path`` wins over ``name``."""

from __future__ import annotations

from typing import Any

from clara_fl.config.removed_handlers import move_removed_handlers


def flat_config(*handlers: dict[str, Any]) -> dict[str, Any]:
    return {"handlers": list(handlers), "post_transforms": []}


def test_a_removed_handler_named_by_its_path_and_alias_is_moved() -> None:
    config = flat_config({"path": "monai.handlers.SegmentationSaver#saver", "args": {"output_dir": "eval"}})

    move_removed_handlers(config)

    assert config["handlers"] == []
    assert config["post_transforms"] == [{"name": "SaveImaged", "args": {"keys": "pred", "output_dir": "eval"}}]


def test_a_handler_whose_path_names_another_class_stays_a_handler() -> None:
    handler = {"name": "SegmentationSaver", "path": "my_handlers.Saver", "args": {}}
    config = flat_config(handler)

    changes = move_removed_handlers(config)

    assert (config["handlers"], config["post_transforms"], changes) == ([handler], [], [])
