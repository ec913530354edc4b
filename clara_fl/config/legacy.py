"""Every config-level translation of older configs, in the order they apply, for loading and ``clara-fl convert``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clara_fl.config.automl import drop_search_annotations
from clara_fl.config.clara40 import Change, translate_clara40
from clara_fl.config.removed_handlers import move_removed_handlers

__all__ = ["translate_legacy"]


def translate_legacy(config: Mapping[str, Any], file: str | None = None) -> tuple[dict[str, Any], list[Change]]:
    """``config`` as explicit Clara 4.1 for today's MONAI (a copy; ``config`` is never changed) and the changes.

    AutoML ``search`` annotations are dropped, Clara 4.0 wiring is written out (4.1 configs keep theirs), then
    removed handlers move into post_transforms. Variables are not substituted.

    Raises:
        ConfigError: an AutoML-only construct, or an old construct in a shape that cannot be translated.
    """
    import copy

    content = copy.deepcopy(dict(config))
    automl = drop_search_annotations(content, file)
    translated, changes = translate_clara40(content, file)
    moved = move_removed_handlers(translated, file)
    return translated, changes + moved + automl
