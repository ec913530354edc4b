"""``clara-fl convert`` writes today's MONAI names (clara_fl.config.modernize); which class a component names is
read by the component grammar (clara_fl.config.specs)."""

from __future__ import annotations

from clara_fl.config.modernize import modernize_names


def test_a_removed_class_name_is_renamed_keeping_its_alias() -> None:
    config = {"pre_transforms": [{"name": "AddChanneld#add", "args": {"keys": "image"}}]}

    modernize_names(config)

    assert config["pre_transforms"][0] == {
        "name": "EnsureChannelFirstd#add",
        "args": {"keys": "image", "channel_dim": "no_channel"},
    }


def test_a_malformed_component_is_left_as_written() -> None:
    spec = {"name": "AddChanneld", "path": "my_transforms.AddChanneld", "args": {"keys": "image"}}
    config = {"pre_transforms": [dict(spec)]}

    changes = modernize_names(config)

    assert (config["pre_transforms"][0], changes) == (spec, [])
