"""The dotted path server kits name the stranded-jobs component by
(``clara_fl.fl.server.stranded_jobs.EndStrandedJobs``, written into the server kit's ``local/resources.json`` by
``clara-fl site setup``).

The component leans on FLARE's internals and lives, gated, in :mod:`clara_fl.fl.flare_internals.stranded_jobs`.
"""

from __future__ import annotations

from clara_fl.fl.flare_internals.stranded_jobs import EndStrandedJobs

__all__ = ["EndStrandedJobs"]
