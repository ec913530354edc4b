"""The gate in front of every patch of FLARE's internals: the FLARE version it was written for, and a site switch.

A patch runs only on a FLARE release inside the range it declares and only where the site has not switched it
off. Otherwise it does nothing at all: it logs one line saying what it does not do and why, and FLARE's own
behaviour runs. A newer FLARE may have changed the internals the patch relies on; a patch that half works is
worse than none.

The switches are in the site file (``local/clara_fl_site.json``, or the file ``$CLARA_FL_SITE_CONFIG`` names; see
:mod:`clara_fl.fl.site.context`), under ``"flare_patches"``: ``{"flare_patches": {"rejoin_after_client_restart":
false}}``. A patch not named there is on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

from clara_fl.config.errors import ConfigError
from clara_fl.fl.site.context import find_site_file, read_site_file

__all__ = ["SWITCHES", "SWITCHES_KEY", "WRITTEN_FOR", "FlarePatch", "installed_flare_version", "site_switches"]

SWITCHES_KEY = "flare_patches"
SWITCHES = (
    "dropout_on_abrupt_exit",
    "rejoin_after_client_restart",
    "end_stranded_jobs",
    "exit_promptly_on_abort",
    "task_check_period",
)
"""The site file's switches, one per patch (see :mod:`clara_fl.fl.flare_internals`)."""

WRITTEN_FOR = ("2.9.0", "2.10.0")
"""The FLARE releases the patches were written against and checked with: from the first, up to (not including)
the second. pyproject.toml pins the same series."""

_SWITCHED_OFF = "the site switched it off"
_RELEASE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def installed_flare_version() -> str:
    """``nvflare.__version__`` of the FLARE this process runs (read on each call)."""
    import nvflare

    return str(getattr(nvflare, "__version__", ""))


def _release(version: str) -> tuple[int, int, int] | None:
    match = _RELEASE.match(version)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def site_switches(site_file: str | None) -> dict[str, bool]:
    """The site file's ``flare_patches`` switches; every switch it does not name is on.

    Raises:
        ConfigError: an unknown switch, or a value that is not true or false, naming the site file and the key.
    """
    switches = dict.fromkeys(SWITCHES, True)
    if site_file is None:
        return switches
    given = read_site_file(site_file).get(SWITCHES_KEY, {})
    if not isinstance(given, dict):
        raise ConfigError(f"must be an object of switches ({', '.join(SWITCHES)})", file=site_file, path=SWITCHES_KEY)
    for name, value in given.items():
        if name not in switches:
            raise ConfigError(
                f"unknown FLARE patch '{name}'; the switches are {', '.join(SWITCHES)}",
                file=site_file,
                path=f"{SWITCHES_KEY}.{name}",
            )
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {value!r}", file=site_file, path=f"{SWITCHES_KEY}.{name}")
        switches[name] = value
    return switches


def _workspace_root(fl_ctx: FLContext) -> str | None:
    """The site's workspace root (the startup kit), where its ``local/`` folder is; None when the context has none."""
    workspace: Any = fl_ctx.get_prop(FLContextKey.WORKSPACE_OBJECT)
    if workspace is None:
        engine = fl_ctx.get_engine()
        get_workspace = getattr(engine, "get_workspace", None)
        workspace = get_workspace() if callable(get_workspace) else None
    get_root_dir = getattr(workspace, "get_root_dir", None)
    return str(get_root_dir()) if callable(get_root_dir) else None


@dataclass(frozen=True)
class FlarePatch:
    """One patch of FLARE's behaviour that leans on its internals.

    Args:
        switch: the patch's switch in the site file (one of :data:`SWITCHES`).
        does: what the patch does, as a verb phrase ("record exit code 137 ..."); the off line says it does not.
        relies_on: the FLARE internals it uses, for the off line and the docs.
        written_for: the FLARE releases it was written against: from the first, up to (not including) the second.
    """

    switch: str
    does: str
    relies_on: str
    written_for: tuple[str, str] = WRITTEN_FOR

    def __post_init__(self) -> None:
        if self.switch not in SWITCHES:
            raise ValueError(f"'{self.switch}' is not one of the switches {SWITCHES}")

    def written_for_this_flare(self) -> bool:
        """Whether the installed FLARE is one of the releases the patch was written for."""
        release = _release(installed_flare_version())
        low, high = _release(self.written_for[0]), _release(self.written_for[1])
        return release is not None and low is not None and high is not None and low <= release < high

    def why_off(self, fl_ctx: FLContext) -> str | None:
        """Why the patch must not run here (the FLARE version, the site's switch, a bad site file); None: it runs."""
        if not self.written_for_this_flare():
            version = installed_flare_version()
            return (
                f"it was written for FLARE {self.written_for[0]} up to {self.written_for[1]} (it relies on "
                f"{self.relies_on}) and this is FLARE {version or 'of unknown version'}"
            )
        try:
            site_file = find_site_file(_workspace_root(fl_ctx))
            on = site_switches(site_file)[self.switch]
        except ConfigError as e:
            return f"the site file is not usable: {e}"
        if not on:
            return f"{_SWITCHED_OFF} ({SWITCHES_KEY}.{self.switch} is false in {site_file})"
        return None

    def active(self, component: FLComponent, fl_ctx: FLContext) -> bool:
        """Whether the patch runs; when it does not, ``component`` logs one line saying what is not done and why.

        Call once per process and keep the answer, so that the line appears once.
        """
        why = self.why_off(fl_ctx)
        if why is None:
            return True
        line = f"FLARE patch '{self.switch}' is off: not going to {self.does}, because {why}; FLARE's behaviour applies"
        # the site's own choice is information; a FLARE release or a site file that turns a patch off is a warning
        (component.log_info if why.startswith(_SWITCHED_OFF) else component.log_warning)(fl_ctx, line)
        return False
