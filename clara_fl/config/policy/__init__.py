"""The restricted policy's catalog: which classes a job's config may build, and what each argument may be.

A config a site did not write may build only catalogued classes (or BYOC classes from the MMAR's ``custom/``
folder, which FLARE's ``byoc`` right governs). Each catalogued class lists what its arguments are
(:class:`~clara_fl.config.policy.kinds.Kind`): plain data, option words, paths it reads or writes, parts of
file names, names it turns into Python objects (with the objects allowed), switches that must be false or
true, and options it passes on to other systems (refused). Every value is judged after it is resolved
(:mod:`clara_fl.config.policy.judge`), so variables, ``@`` references, section items and library defaults
are all seen as the class will see them.

Modules: :mod:`.kinds` (the vocabulary), :mod:`.builtin` (the built-in catalog), :mod:`.site` (a site's
own entries, the ``"catalog"`` key of ``clara_fl_site.json``), :mod:`.catalog` (lookup), :mod:`.names`
(strings that name importable objects), :mod:`.judge` (judging values).
"""

from clara_fl.config.policy.catalog import Catalog, class_name_of
from clara_fl.config.policy.judge import ArgumentJudge, PathRules, Planned, file_name_problem, looks_like_escape
from clara_fl.config.policy.kinds import ArgRule, ClassRule, Family, Kind
from clara_fl.config.policy.names import importable_name
from clara_fl.config.policy.site import SITE_FILE, parse_site_catalog

__all__ = [
    "SITE_FILE",
    "ArgRule",
    "ArgumentJudge",
    "Catalog",
    "ClassRule",
    "Family",
    "Kind",
    "PathRules",
    "Planned",
    "class_name_of",
    "file_name_problem",
    "importable_name",
    "looks_like_escape",
    "parse_site_catalog",
]
