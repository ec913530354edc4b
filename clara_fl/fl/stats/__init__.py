"""Federated statistics of the sites' data from an MMAR (``clara-fl stats``, :mod:`clara_fl.recipes.stats`).

``features`` (a case's and a dataset's numbers), ``loading`` (the MMAR's loader, in the site's confined process),
``generator`` (FLARE's ``Statistics`` at a site), ``privacy`` (the privacy cleansers, tightened by the site file),
``summary`` (Clara's per-site summary and the differences between sites).
"""
