"""Privacy filters: FLARE 2.9's classes by Clara's names, and a site's own privacy policy (local/privacy.json).

A job names each filter by Clara's name and gets the subclass of FLARE's class in
:mod:`clara_fl.fl.site.privacy_filters`, which filters exactly as FLARE's does and counts what it released
each round. Arguments not given take clara-fl's defaults (:data:`CLARA_FL_DEFAULTS`), chosen so that the
shipped MMARs still learn; FLARE's own defaults for SVTPrivacy release only noise (docs/fl.md).

A site policy is a FLARE privacy scope that is the site's default: FLARE applies its filters to every job's
results at that site, whatever the job says (a job may only name another scope the site defines).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.config.jsonio import load_json
from clara_fl.runtime.files import write_json_atomic

__all__ = [
    "CLARA_FL_DEFAULTS",
    "FLARE_PRIVACY_FILTERS",
    "PRIVACY_FILE",
    "PRIVACY_RELEASES_FILE",
    "PRIVACY_FILTERS",
    "PRIVACY_FILTER_PARAMETERS",
    "SITE_SCOPE",
    "parse_privacy_option",
    "privacy_filter",
    "privacy_filter_name",
    "write_site_privacy",
]

_FILTERS = "nvflare.app_common.filters"
FLARE_PRIVACY_FILTERS = {
    "PercentilePrivacy": f"{_FILTERS}.percentile_privacy.PercentilePrivacy",
    "SVTPrivacy": f"{_FILTERS}.svt_privacy.SVTPrivacy",
    "ExcludeVars": f"{_FILTERS}.exclude_vars.ExcludeVars",
}
# what a job names: FLARE's filter, counting what it releases (the same arguments)
PRIVACY_FILTERS = {name: f"clara_fl.fl.site.privacy_filters.{name}" for name in FLARE_PRIVACY_FILTERS}
# Arguments a filter takes when the job does not give them. PercentilePrivacy keeps FLARE's. SVTPrivacy's FLARE
# defaults (gamma 1e-5, noise_var 0.1) clip every per-step change to 1e-5 and add noise 20 times that: the
# global model stays untrained. These clip at PercentilePrivacy's 0.01 per step (well above the shipped MMARs'
# Adam steps, and loose enough for batch norm's running statistics, which a tighter clip holds at their initial
# values), add noise of 2e-4 per step, and release 90 % of the values a round, drawn without replacement (at a
# half, drawn with replacement as FLARE does, a third of the weights moved a round and the e2e spleen job did
# not learn in 3 rounds; docs/fl.md: what this costs and what its epsilon means). ExcludeVars has none: it must
# name what it keeps at the site.
CLARA_FL_DEFAULTS: dict[str, dict[str, Any]] = {
    "PercentilePrivacy": {"percentile": 10, "gamma": 0.01},
    "SVTPrivacy": {"fraction": 0.9, "epsilon": 1.0, "noise_var": 100.0, "gamma": 0.01, "tau": 1e-6, "replace": False},
    "ExcludeVars": {},
}
# Each filter's constructor parameters and the value types accepted for them, as FLARE 2.9 declares them
# (tests/test_privacy_option.py pins this table against the real signatures): checking them needs no nvflare.
_NUMBER = (int, float)
_KINDS = (list,)
PRIVACY_FILTER_PARAMETERS: dict[str, dict[str, tuple[type, ...]]] = {
    "PercentilePrivacy": {"percentile": _NUMBER, "gamma": _NUMBER, "data_kinds": _KINDS},
    "SVTPrivacy": {
        "fraction": _NUMBER,
        "epsilon": _NUMBER,
        "noise_var": _NUMBER,
        "gamma": _NUMBER,
        "tau": _NUMBER,
        "data_kinds": _KINDS,
        "replace": (bool,),
        "epsilon_threshold": _NUMBER,
        "epsilon_query": _NUMBER,
        "epsilon_release": _NUMBER,
    },
    "ExcludeVars": {"exclude_vars": (str, list), "data_kinds": _KINDS},
}
_TYPE_NAMES = {int: "a number", float: "a number", bool: "true or false", str: "a string", list: "a list"}
PRIVACY_FILE = "privacy.json"
# a site's record of what its privacy filters released, a JSON line a round, in the job's app folder
PRIVACY_RELEASES_FILE = "privacy_releases.jsonl"
SITE_SCOPE = "clara_fl_site"
# clara-fl's learner sends its train update as WEIGHT_DIFF; submitted models (WEIGHTS, for cross-site
# evaluation) pass untouched unless the site names data_kinds itself
SITE_DEFAULT_DATA_KINDS = ["WEIGHT_DIFF"]


def privacy_filter(name: str, args: Mapping[str, Any], file: str | None, path: str) -> dict[str, Any]:
    """A FLARE config entry ``{"path", "args"}`` for a privacy filter named as Clara named it, with clara-fl's
    defaults (:data:`CLARA_FL_DEFAULTS`) for the arguments ``args`` does not give.

    Raises:
        ConfigError: an unknown filter, or an argument FLARE 2.9's class does not take or of the wrong type
            (naming file and path).
    """
    problem = _filter_problem(name, args)
    if problem is not None:
        key, message = problem
        raise ConfigError(message, file=file, path=path if key is None else f"{path}.args.{key}")
    return {"path": PRIVACY_FILTERS[name], "args": {**CLARA_FL_DEFAULTS[name], **args}}


def _filter_problem(name: str, args: Mapping[str, Any]) -> tuple[str | None, str] | None:
    """What is wrong with a privacy filter as named and given: (the argument at fault, or None, and what); None
    when nothing is."""
    if name not in PRIVACY_FILTERS:
        carried = ", ".join(PRIVACY_FILTERS)
        return None, f"filter '{name}' is not carried; FLARE 2.9 has {carried} (add others to a job template)"
    accepted = PRIVACY_FILTER_PARAMETERS[name]
    for key, value in args.items():
        if key not in accepted:
            return key, f"not an argument of FLARE 2.9's {name} (it takes {', '.join(accepted)})"
        types = accepted[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            wanted = " or ".join(dict.fromkeys(_TYPE_NAMES[t] for t in types))
            return key, f"{name}'s {key} must be {wanted}, got {value!r}"
    return None


def privacy_filter_name(entry: Mapping[str, Any]) -> str | None:
    """Clara's name of the privacy filter a FLARE config entry builds (clara-fl's class or FLARE's), else None."""
    path = entry.get("path") or entry.get("name")
    if not isinstance(path, str):
        return None
    for name in PRIVACY_FILTERS:
        if path in (PRIVACY_FILTERS[name], FLARE_PRIVACY_FILTERS[name]):
            return name
    return None


def parse_privacy_option(option: str) -> dict[str, Any]:
    """``NAME[:K=V,K=V]`` (``PercentilePrivacy:percentile=10,gamma=0.01``) as a FLARE filter entry.

    Raises:
        UsageError: the option is malformed or names something FLARE 2.9 does not have.
    """
    from clara_fl.config.variables import parse_set_args

    name, _, rest = option.partition(":")
    pairs = [p.strip() for p in rest.split(",") if p.strip()] if rest else []
    try:
        args = parse_set_args(pairs)
    except (UsageError, ValueError):
        raise UsageError("--privacy", option, "expected NAME[:KEY=VALUE,...]") from None
    problem = _filter_problem(name.strip(), args)
    if problem is not None:
        key, message = problem
        raise UsageError("--privacy", option, message if key is None else f"{key}: {message}")
    entry = privacy_filter(name.strip(), args, None, "--privacy")
    if name.strip() != "ExcludeVars":
        entry["args"].setdefault("data_kinds", list(SITE_DEFAULT_DATA_KINDS))
    return entry


def write_site_privacy(local_dir: str, filters: list[dict[str, Any]]) -> tuple[str, bool]:
    """Write the site's privacy policy: one scope, the site's default, filtering what the site sends.

    No filters removes clara-fl's scope. Returns the file and whether it changed.

    Raises:
        ConfigError: an existing privacy.json is not a JSON object.
    """
    path = os.path.join(local_dir, PRIVACY_FILE)
    policy = load_json(path, what="site privacy file") if os.path.isfile(path) else {}
    if not isinstance(policy, dict):
        raise ConfigError("a privacy file must be a JSON object", file=path)
    scopes = [s for s in policy.get("scopes", []) if not (isinstance(s, dict) and s.get("name") == SITE_SCOPE)]
    updated = dict(policy)
    if filters:
        scopes.append(
            {
                "name": SITE_SCOPE,
                "properties": {"set_by": "clara-fl site setup --privacy"},
                "task_result_filters": filters,
                "task_data_filters": [],
            }
        )
        updated["default_scope"] = SITE_SCOPE
    elif updated.get("default_scope") == SITE_SCOPE:
        del updated["default_scope"]
    updated["scopes"] = scopes
    if updated == policy or (not filters and not os.path.isfile(path)):
        return path, False
    write_json_atomic(path, updated)
    return path, True
