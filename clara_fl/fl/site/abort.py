"""The dotted path job configs name the exit-on-abort component by (``clara_fl.fl.site.abort.ExitPromptlyOnAbort``).

The component leans on FLARE's internals and lives, gated, in :mod:`clara_fl.fl.flare_internals.abort`.
"""

from __future__ import annotations

from clara_fl.fl.flare_internals.abort import ExitPromptlyOnAbort

__all__ = ["ExitPromptlyOnAbort"]
