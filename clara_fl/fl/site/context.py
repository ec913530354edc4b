"""Where an FL site keeps its MMAR, and the site-local values a job must not carry.

A job carries no data and no site paths. Each site supplies them in a site file, JSON of the form
``{"environment": {"DATA_ROOT": "/data/spleen", "DATASET_JSON": "/data/spleen/dataset_{SITE_NAME}.json"}}``,
found at ``<site workspace>/local/clara_fl_site.json`` or at the path in ``$CLARA_FL_SITE_CONFIG``
(handy for the simulator, where all sites share one machine). Values may use ``{SITE_NAME}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.config.jsonio import load_json
from clara_fl.config.policy import parse_site_catalog
from clara_fl.config.restrictions import CodePolicy
from clara_fl.config.variables import PLACEHOLDER

__all__ = [
    "SITE_FILE_NAME",
    "SITE_CONFIG_ENV",
    "CODE_POLICY_ENV",
    "SiteContext",
    "site_context",
    "read_site_file",
    "find_mmar_root",
    "code_policy",
    "data_roots",
    "site_options",
    "CONFINEMENT_MODES",
]

SITE_FILE_NAME = "clara_fl_site.json"
SITE_CONFIG_ENV = "CLARA_FL_SITE_CONFIG"
CODE_POLICY_ENV = "CLARA_FL_CODE_POLICY"
DEFAULT_CODE_POLICY = "restricted"
DEFAULT_DATA_ROOT = os.path.expanduser("~/.clara-fl/data")
DEFAULT_CONFINEMENT = "preferred"
CONFINEMENT_MODES = ("required", "preferred", "off")


@dataclass(frozen=True)
class SiteContext:
    """A site's name, its MMAR root inside the job's app folder, and its local environment overrides."""

    name: str
    app_dir: str
    environment: dict[str, Any] = field(default_factory=dict)
    site_file: str | None = None
    code_policy: str = DEFAULT_CODE_POLICY
    #: ``required``, ``preferred`` or ``off``: whether a job's config code runs in a Landlock-confined process
    confinement: str = DEFAULT_CONFINEMENT
    #: send the server a failure's full text, case names and paths included (a site's opt-in; default: only
    #: the error's kind, config item and class)
    send_error_details: bool = False
    #: classes and arguments the site adds to the restricted policy's catalog (clara_fl.config.restrictions)
    catalog: dict[str, Any] = field(default_factory=dict)
    #: keep the better of the global and the site's personalized model for its own use (clara_fl.fl.site.keep_better);
    #: None: as the job's Learner says
    keep_better_model: bool | None = None

    def variables(self) -> dict[str, Any]:
        """Values that sit above the job's environment.json: the site's own, plus SITE_NAME."""
        return {**self.environment, "SITE_NAME": self.name}

    @property
    def policy(self) -> CodePolicy:
        """The site's code policy with the folders its data may be read from (see :func:`data_roots`)."""
        return CodePolicy(self.code_policy, data_roots(self.variables()), catalog=dict(self.catalog))


def data_roots(site_values: dict[str, Any]) -> tuple[str, ...]:
    """The folders a job may read data from: every path in the site file (a file's folder), else
    ``~/.clara-fl/data``, where ``clara-fl synth`` writes."""
    roots = []
    for value in site_values.values():
        if not isinstance(value, str):
            continue
        for _ in range(3):  # site values may use each other and SITE_NAME
            value = PLACEHOLDER.sub(lambda m: str(site_values.get(m.group(1), m.group(0))), value)
        path = os.path.expanduser(value)
        if os.path.isabs(path):
            roots.append(path if os.path.isdir(path) or not os.path.splitext(path)[1] else os.path.dirname(path))
    return tuple(dict.fromkeys(roots)) or (DEFAULT_DATA_ROOT,)


def find_mmar_root(app_dir: str, config_file: str = "config/config_train.json") -> str:
    """The app folder itself (``clara-fl job create``), or its custom/ (``nvflare job create -sd MMAR``)."""
    for root in (app_dir, os.path.join(app_dir, "custom")):
        if os.path.isfile(os.path.join(root, config_file)):
            return root
    raise ConfigError(
        f"the job's app folder holds no MMAR: {config_file} is neither in it nor in its custom/ folder", file=app_dir
    )


def read_site_file(path: str) -> dict[str, Any]:
    content = load_json(path, what="site file")
    if not isinstance(content, dict) or not isinstance(content.get("environment", {}), dict):
        raise ConfigError('a site file must be {"environment": {NAME: value, ...}}', file=path)
    return content


def find_site_file(workspace_root: str | None) -> str | None:
    """``$CLARA_FL_SITE_CONFIG`` wins; else ``<workspace>/local/clara_fl_site.json`` if present."""
    explicit = os.environ.get(SITE_CONFIG_ENV)
    if explicit:
        if not os.path.isfile(explicit):
            raise ConfigError(f"${SITE_CONFIG_ENV} names a file that does not exist", file=explicit)
        return explicit
    if workspace_root:
        local = os.path.join(workspace_root, "local", SITE_FILE_NAME)
        if os.path.isfile(local):
            return local
    return None


def site_context(fl_ctx: Any, config_file: str = "config/config_train.json") -> SiteContext:
    """The site this FLARE context runs on: MMAR paths resolve against the app folder, never the cwd."""
    engine = fl_ctx.get_engine()
    workspace = engine.get_workspace()
    job_id = fl_ctx.get_job_id()
    app_dir = find_mmar_root(workspace.get_app_dir(job_id), config_file)
    name = fl_ctx.get_identity_name()
    site_file = find_site_file(workspace.get_root_dir())
    content = read_site_file(site_file) if site_file else {}
    return SiteContext(
        name=name,
        app_dir=app_dir,
        environment=dict(content.get("environment", {})),
        site_file=site_file,
        code_policy=code_policy(content, site_file),
        **site_options(content, site_file),
    )


def site_options(site_content: dict[str, Any], site_file: str | None = None) -> dict[str, Any]:
    """The site file's ``confinement``, ``send_error_details``, ``catalog`` and ``keep_better_model``, checked.

    Raises:
        ConfigError: a value of the wrong kind, naming the site file and the key.
    """
    where = site_file or "site file"
    confinement = site_content.get("confinement", DEFAULT_CONFINEMENT)
    if confinement not in CONFINEMENT_MODES:
        raise ConfigError(
            f"must be one of {', '.join(CONFINEMENT_MODES)}, got {confinement!r}", file=where, path="confinement"
        )
    details = site_content.get("send_error_details", False)
    if not isinstance(details, bool):
        raise ConfigError(f"must be true or false, got {details!r}", file=where, path="send_error_details")
    catalog = site_content.get("catalog", {})
    if not isinstance(catalog, dict):
        raise ConfigError("must be an object (see docs/fl.md, the catalog)", file=where, path="catalog")
    try:
        parse_site_catalog(catalog)  # a bad entry fails when the site file is read, not at the first build
    except ConfigError as e:
        raise e.located(where) from None
    keep_better = site_content.get("keep_better_model")
    if keep_better is not None and not isinstance(keep_better, bool):
        raise ConfigError(f"must be true or false, got {keep_better!r}", file=where, path="keep_better_model")
    return {
        "confinement": confinement,
        "send_error_details": details,
        "catalog": catalog,
        "keep_better_model": keep_better,
    }


def code_policy(site_content: dict[str, Any], site_file: str | None = None) -> str:
    """How config code runs at this site: ``$CLARA_FL_CODE_POLICY``, else the site file's
    ``code_policy``, else ``"restricted"`` (a job's config comes from outside the site)."""
    policy = os.environ.get(CODE_POLICY_ENV) or site_content.get("code_policy") or DEFAULT_CODE_POLICY
    if policy not in ("full", "restricted"):
        raise ConfigError(
            f"code_policy must be 'full' or 'restricted', got '{policy}'", file=site_file or f"${CODE_POLICY_ENV}"
        )
    return policy
