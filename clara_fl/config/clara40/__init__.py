"""Clara 4.0 configs (implicit wiring) translated to explicit Clara 4.1 when they are read.

:func:`translate_clara40` is called on every config read from an MMAR (before variables are
substituted, so ``clara-fl convert`` can write the same translation with the variables kept). A 4.1
config is returned unchanged; see :mod:`clara_fl.config.clara40.detect` for the rule, and docs/clara40.md
for every construct and what it becomes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from clara_fl.config.clara40.changes import Change, log_changes
from clara_fl.config.clara40.detect import clara40_markers, is_clara40, sections_of
from clara_fl.config.clara40.wiring import wire_section
from clara_fl.config.errors import ConfigError
from clara_fl.config.locator import locate_component

__all__ = ["Change", "is_clara40", "translate_clara40", "log_changes"]

logger = logging.getLogger(__name__)
_warned: set[str | None] = set()


def translate_clara40(config: Mapping[str, Any], file: str | None = None) -> tuple[dict[str, Any], list[Change]]:
    """``config`` with Clara 4.0's implicit wiring written out as Clara 4.1 ``@`` references.

    Args:
        config: a config as read from its file (variables not substituted yet); never changed.
        file: the config file as users name it, for error messages.

    Returns:
        The translated config (``config`` itself when it is not a 4.0 config) and the changes made.

    Raises:
        ConfigError: a 4.0 construct in a shape Clara 4.0 did not accept either.
    """
    if not is_clara40(config):
        markers = clara40_markers(config)
        if markers and file not in _warned:
            _warned.add(file)
            logger.warning(
                "%s: %s look like Clara 4.0 implicit wiring, but the config uses @ references, so it is read as "
                "Clara 4.1 and nothing is wired implicitly (docs/clara40.md)",
                file or "config",
                ", ".join(markers),
            )
        return dict(config), []
    translated = copy.deepcopy(dict(config))
    sections = sections_of(translated)
    known = {name for section in sections.values() for name in section}
    config_globals = {k: v for k, v in translated.items() if not isinstance(v, (dict, list))}
    changes: list[Change] = []
    for prefix, section in sections.items():
        try:
            # A class is looked at only where importing it runs no code the policy has not admitted (read time
            # comes before any policy check); one that is not is taken to accept every argument.
            wire_section(section, prefix, known, config_globals, locate_component, changes)  # type: ignore[arg-type]
        except ConfigError as e:
            raise e.located(file, prefix or None) from e.__cause__
    return translated, changes
