"""Every piece of clara-fl that leans on NVIDIA FLARE's internals, each behind a gate.

Each module here patches one FLARE behaviour with something FLARE does not offer publicly: a file its client
parent reads, a method of its (private) engines, a process exit that races its shutdown, a private attribute it
polls. Each declares, in a :class:`~clara_fl.fl.flare_internals.gate.FlarePatch`, the FLARE releases it was
written for and its site switch; on another FLARE release, or at a site that switched it off, it logs one line
and FLARE's own behaviour runs (:mod:`clara_fl.fl.flare_internals.gate`). The patches and their switches:

* :mod:`~clara_fl.fl.flare_internals.dropout` (``dropout_on_abrupt_exit``): a site whose job process dies drops
  out of the job instead of failing it.
* :mod:`~clara_fl.fl.flare_internals.rejoin` (``rejoin_after_client_restart``): that site rejoins the running job
  when its client restarts.
* :mod:`~clara_fl.fl.flare_internals.stranded_jobs` (``end_stranded_jobs``): a server restart ends the jobs it
  stranded, with a line saying how to resume them.
* :mod:`~clara_fl.fl.flare_internals.abort` (``exit_promptly_on_abort``): an aborted job's process exits promptly.
* :mod:`~clara_fl.fl.flare_internals.task_check_period` (``task_check_period``): the server workflows poll at the
  period the job gives them.

Private attributes of FLARE, MONAI, ignite or torch used elsewhere are listed in :mod:`clara_fl.runtime.private_api`.
"""
