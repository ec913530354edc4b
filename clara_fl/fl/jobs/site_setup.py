"""``clara-fl site setup``: prepare a provisioned FLARE startup kit (server or client) for clara-fl jobs.

Three things change, all in the kit's ``local/`` folder and nowhere else:

* ``local/resources.json`` (created from ``resources.json.default`` if absent; the ``.default`` file is
  left as it is): :data:`~clara_fl.fl.jobs.allow_list.CLARA_ALLOW_LIST` is added to its ``class_allow_list``, so
  jobs without ``app/custom/`` may build clara-fl's components and the FLARE classes they use. A server
  kit also gets :data:`SERVER_COMPONENT`, which ends the jobs a server restart stranded
  (:mod:`clara_fl.fl.flare_internals.stranded_jobs`). A client kit's process launcher, if it is FLARE's
  ``ClientProcessJobLauncher``, becomes :data:`CLIENT_LAUNCHER`, which lets a site whose job process died
  rejoin the running job when its client restarts (:mod:`clara_fl.fl.flare_internals.rejoin`). Both lean on
  FLARE's internals: each runs only on the FLARE release it was written for, and a site turns it off in its
  site file (``"flare_patches": {"end_stranded_jobs": false}``, ``"rejoin_after_client_restart"``; see
  :mod:`clara_fl.fl.flare_internals.gate`). Their paths here are the old, stable ones that set-up kits hold.
* ``local/clara_fl_site.json`` (the site file, see :mod:`clara_fl.fl.site.context`): the site's environment
  values (``DATA_ROOT``, ``DATASET_JSON``, ...), merged with the values already there.
* the same site file's ``code_policy``: ``"restricted"`` (default) or ``"full"`` (``allow_code=True``).

Running it twice with the same values changes nothing, and says so. Files are replaced atomically, so a
running site (FLARE re-reads ``resources.json`` when it changes) never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clara_fl.config.errors import ConfigError, UsageError
from clara_fl.config.jsonio import load_json
from clara_fl.fl.dp_settings import site_dp_policy
from clara_fl.fl.jobs.allow_list import resources_with_allow_list
from clara_fl.fl.site.context import CONFINEMENT_MODES, SITE_FILE_NAME, read_site_file
from clara_fl.runtime.confinement import confinement_status
from clara_fl.runtime.files import write_json_atomic

__all__ = ["StartupKit", "SiteSetupResult", "find_startup_kit", "setup_site"]

RESOURCES = "resources.json"
RESOURCES_DEFAULT = "resources.json.default"
CODE_POLICY_MEANING = {
    "restricted": "config #expressions and lambdas from a job run only a checked safe subset of Python (no imports, "
    "no dunders, allow-listed helpers); --allow-code permits full Python",
    "full": "config #expressions and lambdas from a job run as full Python with this site's rights; "
    "use only for jobs from submitters this site trusts",
}
# the server's system component that ends jobs a server restart left RUNNING with no process
SERVER_COMPONENT = {"id": "clara_fl_end_stranded_jobs", "path": "clara_fl.fl.server.stranded_jobs.EndStrandedJobs"}
# a client kit's job launcher: FLARE's, which it replaces, and clara-fl's, which rejoins running jobs
FLARE_CLIENT_LAUNCHER = "nvflare.app_common.job_launcher.client_process_launcher.ClientProcessJobLauncher"
CLIENT_LAUNCHER = "clara_fl.fl.site.rejoin.RejoiningJobLauncher"
COMPONENT_PURPOSE = {
    SERVER_COMPONENT["path"]: "ends jobs a server restart stranded",
    CLIENT_LAUNCHER: "a site whose job process died rejoins the running job when its client restarts",
}
# values of these keys name files or folders on the site; a missing one is worth a note, not an error
PATH_KEYS = ("DATA_ROOT", "DATASET_JSON")


@dataclass(frozen=True)
class StartupKit:
    """A provisioned FLARE startup kit: its root folder, ``"server"`` or ``"client"``, and the site's name."""

    root: str
    kind: str
    name: str

    @property
    def local_dir(self) -> str:
        return os.path.join(self.root, "local")


@dataclass
class SiteSetupResult:
    """What :func:`setup_site` found and changed; :meth:`summary` is the text the command prints."""

    kit: StartupKit
    resources_file: str
    site_file: str
    code_policy: str
    resources_created: bool = False
    allow_list_added: list[str] = field(default_factory=list)
    components_added: list[str] = field(default_factory=list)
    environment_changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    code_policy_before: str | None = None
    confinement: str = "preferred"
    confinement_before: str | None = None
    log_streaming_turned_off: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(
            self.resources_created
            or self.allow_list_added
            or self.components_added
            or self.environment_changes
            or self.code_policy_before != self.code_policy
            or self.confinement_before != self.confinement
            or self.log_streaming_turned_off
        )

    def summary(self) -> str:
        kit = self.kit
        lines = [f"{kit.kind} kit '{kit.name}' at {kit.root}"]
        resources = os.path.relpath(self.resources_file, kit.root)
        if self.resources_created:
            lines.append(f"  created {resources} from local/{RESOURCES_DEFAULT} (the .default file is unchanged)")
        if self.allow_list_added:
            lines.append(f"  {resources}: added to class_allow_list: {', '.join(self.allow_list_added)}")
        else:
            lines.append(f"  {resources}: class_allow_list already allows clara-fl jobs")
        for component in self.components_added:
            lines.append(f"  {resources}: added component {component} ({COMPONENT_PURPOSE[component]})")
        site_file = os.path.relpath(self.site_file, kit.root)
        for name, (old, new) in self.environment_changes.items():
            change = f"{_show(old)} -> {_show(new)}" if old is not None else f"{_show(new)} (new)"
            lines.append(f"  {site_file}: environment {name} = {change}")
        unchanged = sorted(set(self.environment) - set(self.environment_changes))
        if unchanged:
            lines.append(f"  {site_file}: environment unchanged: {', '.join(unchanged)}")
        if self.log_streaming_turned_off:
            lines.append(
                f"  {resources}: allow_log_streaming = false (FLARE would send the site's error log, case names and "
                "paths included, to the server)"
            )
        lines.append(f"  job confinement '{self.confinement}': {confinement_status(self.confinement)}")
        if self.code_policy_before != self.code_policy:
            before = f" (was {self.code_policy_before})" if self.code_policy_before else ""
            lines.append(f"  {site_file}: code_policy = {self.code_policy}{before}")
        else:
            lines.append(f"  {site_file}: code_policy stays {self.code_policy}")
        lines.append(f"    {self.code_policy}: {CODE_POLICY_MEANING[self.code_policy]}")
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(
            "  changed the files above" if self.changed else "  nothing to change: this kit was already set up this way"
        )
        return "\n".join(lines)


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def find_startup_kit(site_dir: str | os.PathLike) -> StartupKit:
    """The kit at ``site_dir``: ``startup/fed_server.json`` makes it a server, ``startup/fed_client.json`` a client."""
    root = os.path.abspath(os.fspath(site_dir))
    if not os.path.isdir(root):
        raise ConfigError(
            "no such folder: give the folder of a FLARE startup kit (the one holding startup/ and local/)", file=root
        )
    startup = os.path.join(root, "startup")
    server_file, client_file = os.path.join(startup, "fed_server.json"), os.path.join(startup, "fed_client.json")
    if os.path.isfile(server_file):
        servers = load_json(server_file, what="FLARE server startup file").get("servers") or [{}]
        kind, name = "server", str(servers[0].get("admin_server") or os.path.basename(root))
    elif os.path.isfile(client_file):
        client = load_json(client_file, what="FLARE client startup file").get("client", {})
        kind, name = "client", str(client.get("fqsn") or os.path.basename(root))
    elif os.path.isfile(os.path.join(startup, "fed_admin.json")):
        raise ConfigError("this is an admin kit: site setup is for the server's and the clients' kits", file=root)
    else:
        raise ConfigError(
            "not a FLARE startup kit: neither startup/fed_server.json nor startup/fed_client.json is in this folder",
            file=root,
        )
    if not os.path.isdir(os.path.join(root, "local")):
        raise ConfigError("the startup kit has no local/ folder", file=root)
    return StartupKit(root=root, kind=kind, name=name)


def _update_resources(kit: StartupKit, result: SiteSetupResult) -> None:
    path = result.resources_file
    default = os.path.join(kit.local_dir, RESOURCES_DEFAULT)
    if os.path.isfile(path):
        resources = load_json(path, what="site resources file")
    elif os.path.isfile(default):
        resources = load_json(default, what="site resources file")
        result.resources_created = True
    else:
        raise ConfigError(f"the startup kit has neither local/{RESOURCES} nor local/{RESOURCES_DEFAULT}", file=kit.root)
    if not isinstance(resources, dict):
        raise ConfigError("a resources file must be a JSON object", file=path)
    before = resources.get("class_allow_list")
    updated = resources_with_allow_list(resources)
    if isinstance(before, list):
        result.allow_list_added = [entry for entry in updated["class_allow_list"] if entry not in before]
    else:
        result.allow_list_added = list(updated["class_allow_list"])
        result.notes.append(
            f"{RESOURCES} had no class_allow_list: FLARE's default list was written with clara-fl's entries"
        )
    components = updated.setdefault("components", [])
    if not isinstance(components, list):
        raise ConfigError("expected a list of components", file=path, path="components")
    if kit.kind == "server":
        if not any(isinstance(c, dict) and c.get("path") == SERVER_COMPONENT["path"] for c in components):
            components.append({**SERVER_COMPONENT, "args": {}})
            result.components_added.append(SERVER_COMPONENT["path"])
    else:
        _use_rejoining_launcher(components, result)
        if "allow_log_streaming" not in updated:
            # FLARE streams a client's error_log.txt to the server (SiteLogStreamer), and uploads it at the end
            # of each job: nothing identifying may leave a site, so a site turns it on only by choice.
            updated["allow_log_streaming"] = False
            result.log_streaming_turned_off = True
    if (
        result.resources_created
        or result.allow_list_added
        or result.components_added
        or result.log_streaming_turned_off
    ):
        write_json_atomic(path, updated)


def _use_rejoining_launcher(components: list[Any], result: SiteSetupResult) -> None:
    """FLARE's client process launcher in ``components`` becomes :data:`CLIENT_LAUNCHER`, its id kept."""
    paths = [c.get("path") for c in components if isinstance(c, dict)]
    if CLIENT_LAUNCHER in paths:
        return
    for component in components:
        if isinstance(component, dict) and component.get("path") == FLARE_CLIENT_LAUNCHER:
            component["path"] = CLIENT_LAUNCHER
            result.components_added.append(CLIENT_LAUNCHER)
            return
    result.notes.append(
        f"{RESOURCES} has no {FLARE_CLIENT_LAUNCHER.rsplit('.', 1)[-1]} (another job launcher?): a site whose job "
        "process dies does not rejoin the running job"
    )


def _update_site_file(
    kit: StartupKit, environment: Mapping[str, Any], code_policy: str, result: SiteSetupResult
) -> None:
    path = result.site_file
    content = read_site_file(path) if os.path.isfile(path) else {}
    site_dp_policy(content, path)  # a site file's "dp" policy is checked here, not at the first DP job
    current = dict(content.get("environment", {}))
    result.code_policy_before = content.get("code_policy")
    result.confinement_before = content.get("confinement")
    for name, value in environment.items():
        if name not in current or current[name] != value:
            result.environment_changes[name] = (current.get(name), value)
        current[name] = value
    result.environment = current
    for name in PATH_KEYS:
        value = current.get(name)
        if isinstance(value, str):
            here = value.replace("{SITE_NAME}", kit.name)
            if not os.path.exists(here):
                result.notes.append(f"{name} {here} does not exist on this machine (yet)")
    if kit.kind == "server" and current:
        result.notes.append("the server trains on no data: environment values matter on client kits")
    changed = result.code_policy_before != code_policy or result.confinement_before != result.confinement
    if result.environment_changes or changed or not os.path.isfile(path):
        content = {**content, "environment": current, "code_policy": code_policy, "confinement": result.confinement}
        write_json_atomic(path, content)


def setup_site(
    site_dir: str | os.PathLike,
    environment: Mapping[str, Any] | None = None,
    allow_code: bool = False,
    confinement: str | None = None,
) -> SiteSetupResult:
    """Set up the startup kit at ``site_dir`` for clara-fl jobs and return what changed.

    Args:
        site_dir: the kit's root folder (holding ``startup/`` and ``local/``).
        environment: site-local values above the job's environment.json, e.g. ``{"DATA_ROOT": "/data"}``;
            strings may use ``{SITE_NAME}``, kept verbatim. Merged with the values already in the site file.
        allow_code: record ``code_policy: "full"`` instead of ``"restricted"``.
        confinement: record the site's job confinement (``required``, ``preferred``, ``off``); None keeps the
            site file's (default ``preferred``).

    Raises:
        UsageError: an environment name that is not a non-empty string (``--set``), an unknown confinement mode
            (``--confinement``).
        ConfigError: no startup kit, a resources or site file that is not what it should be.
    """
    kit = find_startup_kit(site_dir)
    for name in environment or {}:
        if not isinstance(name, str) or not name:
            raise UsageError("--set", None, f"environment names must be non-empty strings, got {name!r}")
    result = SiteSetupResult(
        kit=kit,
        resources_file=os.path.join(kit.local_dir, RESOURCES),
        site_file=os.path.join(kit.local_dir, SITE_FILE_NAME),
        code_policy="full" if allow_code else "restricted",
    )
    if confinement is not None and confinement not in CONFINEMENT_MODES:
        raise UsageError("--confinement", confinement, f"expected one of {', '.join(CONFINEMENT_MODES)}")
    if os.path.isfile(result.site_file):
        result.confinement = str(read_site_file(result.site_file).get("confinement", "preferred"))
    result.confinement = confinement or result.confinement
    _update_resources(kit, result)
    _update_site_file(kit, dict(environment or {}), result.code_policy, result)
    return result
