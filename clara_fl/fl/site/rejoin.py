"""The dotted path site kits name the rejoining job launcher by (``clara_fl.fl.site.rejoin.RejoiningJobLauncher``,
written into a client kit's ``local/resources.json`` by ``clara-fl site setup``).

The launcher leans on FLARE's internals and lives, gated, in :mod:`clara_fl.fl.flare_internals.rejoin`.
"""

from __future__ import annotations

from clara_fl.fl.flare_internals.rejoin import RejoiningJobLauncher

__all__ = ["RejoiningJobLauncher"]
