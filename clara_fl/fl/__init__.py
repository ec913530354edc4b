"""NVIDIA FLARE face of clara-fl: Learner, Validator, persistor, job creation and results.

Components are named by full path (``clara_fl.fl.learner.ClaraLearner``) in job configs; the
site's class allow-list needs the prefix ``clara_fl.`` (see docs/fl.md).
"""
