"""NVIDIA FLARE face of clara-fl, laid out by where the code runs.

* :mod:`clara_fl.fl.site` runs at every site: the Learner and Validator FLARE calls, the torchrun
  worker for ``--nproc-per-site``, the site's local state, weights and metric streaming, and the
  site context (its MMAR, site file and code policy).
* :mod:`clara_fl.fl.server` runs at the server: the model persistor, the server workflows, the best
  global model selection and the update filter.
* :mod:`clara_fl.fl.jobs` runs where jobs are made and deployed: the class allow-list, site set-up,
  privacy scopes and reading results (job folders come from :mod:`clara_fl.recipes`).

Components are named by full path (``clara_fl.fl.site.learner.ClaraLearner``) in job configs; the
site's class allow-list needs the prefix ``clara_fl.`` (see docs/fl.md).
"""
