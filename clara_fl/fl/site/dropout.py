"""The dotted path job configs name the drop-out component by (``clara_fl.fl.site.dropout.DropOutOnAbruptExit``).

The component leans on FLARE's internals and lives, gated, in :mod:`clara_fl.fl.flare_internals.dropout`.
"""

from __future__ import annotations

from clara_fl.fl.flare_internals.dropout import ABRUPT_EXIT_CODE, DropOutOnAbruptExit

__all__ = ["ABRUPT_EXIT_CODE", "DropOutOnAbruptExit"]
