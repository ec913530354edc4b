"""Arguments every MMAR command shares (Clara's -m/-c/-e/--set), and checks of command-line input.

Every command checks its own arguments before anything runs or is written: counts through the
argparse types here (argparse's one-line usage error, exit 2), folders and files through the ``require_*``
functions (a one-line :class:`UsageError` naming the option, the value and what was expected, exit 2).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Any

from clara_fl.config.errors import ConfigError, UsageError

logger = logging.getLogger(__name__)

__all__ = [
    "add_mmar_arguments",
    "load_from_args",
    "code_policy",
    "positive_int",
    "non_negative_float",
    "require_folder",
    "require_file",
    "require_mmar",
    "require_flare_job",
    "FlareJob",
]


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def require_folder(path: str, option: str, what: str = "folder") -> str:
    """``path`` if it is a folder.

    Raises:
        UsageError: naming ``option`` and ``path``: nothing there, or a file.
    """
    if not os.path.isdir(path):
        problem = f"{what} not found" if not os.path.exists(path) else f"{what} expected, but this is a file"
        raise UsageError(option, path, problem)
    return path


def require_file(path: str, option: str, what: str = "file") -> str:
    """``path`` if it is a file.

    Raises:
        UsageError: naming ``option`` and ``path``: nothing there, or a folder.
    """
    if not os.path.isfile(path):
        problem = f"{what} not found" if not os.path.exists(path) else f"{what} expected, but this is a folder"
        raise UsageError(option, path, problem)
    return path


def require_mmar(path: str, option: str = "--mmar") -> str:
    """``path`` if it is an MMAR (a folder with config/config_train.json).

    Raises:
        UsageError: naming ``option`` and ``path``: no folder, or one without config/config_train.json.
    """
    require_folder(path, option, "MMAR folder")
    if not os.path.isfile(os.path.join(path, "config", "config_train.json")):
        raise UsageError(option, path, "not an MMAR: config/config_train.json is missing")
    return path


@dataclass
class FlareJob:
    """What a command needs to know about a FLARE job folder before handing it to FLARE."""

    folder: str
    meta: dict[str, Any]
    server_config: dict[str, Any] | None

    def sites_needed(self) -> tuple[int, str] | None:
        """The most sites the job needs at once and where it says so: meta.json's ``min_clients`` or a
        server workflow's ``min_clients``/``num_clients``; None if it names no number."""
        found: list[tuple[int, str]] = []
        if isinstance(self.meta.get("min_clients"), int):
            found.append((self.meta["min_clients"], "meta.json: min_clients"))
        for workflow in (self.server_config or {}).get("workflows", []):
            args = workflow.get("args", {}) if isinstance(workflow, dict) else {}
            for key in ("min_clients", "num_clients"):
                if isinstance(args.get(key), int) and not isinstance(args.get(key), bool):
                    found.append((args[key], f"config_fed_server.json: workflows[{workflow.get('id')}].args.{key}"))
        return max(found, key=lambda f: f[0]) if found else None


def require_flare_job(folder: str, option: str = "job") -> FlareJob:
    """A FLARE job folder: ``meta.json`` with a ``deploy_map`` whose apps have a client and a server config.

    Raises:
        UsageError: the folder, meta.json or an app config is missing.
        ConfigError: meta.json or the server config is unreadable, or meta.json has no ``deploy_map``.
    """
    from clara_fl.config.jsonio import load_json

    require_folder(folder, option, "job folder")
    meta_file = os.path.join(folder, "meta.json")
    if not os.path.isfile(meta_file):
        problem = "not a FLARE job: meta.json is missing (clara-fl job create writes a complete job)"
        raise UsageError(option, folder, problem)
    meta = load_json(meta_file, "job meta file")
    if not isinstance(meta, dict) or not isinstance(meta.get("deploy_map"), dict) or not meta["deploy_map"]:
        problem = """a FLARE job's meta.json needs a 'deploy_map' object, e.g. {"app": ["@ALL"]}"""
        raise ConfigError(problem, file=meta_file, path="deploy_map")
    apps = [os.path.join(folder, app, "config") for app in meta["deploy_map"]]
    found = {
        side: next(
            (
                os.path.join(a, f"config_fed_{side}.{ext}")
                for a in apps
                for ext in ("json", "conf")
                if os.path.isfile(os.path.join(a, f"config_fed_{side}.{ext}"))
            ),
            None,
        )
        for side in ("client", "server")
    }
    for side, path in found.items():
        if path is None:
            names = ", ".join(os.path.relpath(a, folder) for a in apps)
            raise UsageError(option, folder, f"not a FLARE job: no config_fed_{side}.json in {names}")
    server_config = None
    if found["server"] and found["server"].endswith(".json"):
        loaded = load_json(found["server"], "server config")
        server_config = loaded if isinstance(loaded, dict) else None
    return FlareJob(folder, meta, server_config)


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """Clara's ``--set NAME=VALUE ...``, repeatable; :func:`clara_fl.config.variables.parse_set_args` parses it."""
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="NAME=VALUE", help=help)


def add_mmar_arguments(parser: argparse.ArgumentParser, default_config: str) -> None:
    parser.add_argument("-m", "--mmar", required=True, help="MMAR root folder")
    parser.add_argument(
        "-c", "--config", default=default_config, help=f"config file, relative to the MMAR (default: {default_config})"
    )
    parser.add_argument(
        "-e",
        "--environment",
        default="config/environment.json",
        help="environment file (default: config/environment.json)",
    )
    add_set_argument(parser, "override variables, e.g. epochs=2 amp=False")
    parser.add_argument(
        "--safe",
        action="store_true",
        help="run the config under the restricted policy FL sites use (for configs you did not write): "
        "closed code grammar, catalogued library classes only, outputs inside the MMAR; and, where the kernel "
        "has Landlock, in a confined process that writes only inside the MMAR",
    )
    parser.add_argument(
        "--data-root",
        action="append",
        default=[],
        metavar="DIR",
        help="with --safe: a folder the run may read data from (repeatable; default: the folders of DATA_ROOT "
        "and DATASET_JSON)",
    )


def load_from_args(args: argparse.Namespace) -> Any:
    from clara_fl.config.mmar import load_config
    from clara_fl.config.variables import parse_set_args

    return load_config(args.mmar, args.config, args.environment, parse_set_args(args.set))


def code_policy(args: argparse.Namespace) -> Any:
    """The code policy of a standalone run: ``full`` for your own configs, restricted with ``--safe``, reading
    data from ``--data-root`` (or, without it, DATA_ROOT and DATASET_JSON's folder)."""
    from clara_fl.config.restrictions import CodePolicy

    if not getattr(args, "safe", False):
        return CodePolicy("full")
    return CodePolicy("restricted", tuple(args.data_root) or None)


CONFINED_ENV = "CLARA_FL_CONFINED"  # set in the confined child of a --safe run


def run_confined(args: argparse.Namespace, loaded: Any) -> int | None:
    """``--safe``: run this command again in a confined child process (Landlock), before the config builds
    anything; returns its exit code, or None when this process should go on itself (no ``--safe``, or it is
    that child already).

    The child writes only in the MMAR folder and a private temporary folder; reads only the MMAR, the data
    folders (``--data-root``, else the folders the run's DATA_ROOT and DATASET_JSON name) and the Python
    installation; starts no program but the Python interpreter; opens no TCP socket but what DDP between this
    run's own processes needs. Where the kernel has no Landlock it says so in one WARNING line and the run goes
    on under the restricted policy alone.
    """
    import shutil
    import subprocess
    import sys

    from clara_fl.runtime.confinement import confined_environment, job_confinement, make_temp_dir, spawn_args

    if not getattr(args, "safe", False) or os.environ.get(CONFINED_ENV):
        return None
    roots = [os.path.abspath(r) for r in args.data_root] or _data_folders(loaded.variables.as_dict())
    port = os.environ.get("MASTER_PORT")
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    temp_dir = make_temp_dir("clara-fl-safe-")
    try:
        confinement = job_confinement(
            os.path.abspath(loaded.mmar_root),
            roots,
            temp_dir,
            ddp=ddp,
            rendezvous_port=int(port) if ddp and port and port.isdigit() else None,
        )
        logger.info("--safe: running confined; data read from %s", ", ".join(roots) or "nowhere")
        command = [sys.executable, "-m", "clara_fl.runtime.confinement", *spawn_args(confinement, "preferred"), "--"]
        command += [sys.executable, "-m", "clara_fl", *args.argv]
        return subprocess.run(command, env={**confined_environment(temp_dir), CONFINED_ENV: "1"}).returncode
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _data_folders(variables: dict[str, Any]) -> list[str]:
    folders = []
    for name in ("DATA_ROOT", "DATASET_JSON"):
        value = variables.get(name)
        if isinstance(value, str) and value:
            path = os.path.abspath(os.path.expanduser(value))
            folders.append(path if os.path.isdir(path) else os.path.dirname(path))
    return list(dict.fromkeys(folders))


def check_simulation(job: str, n_clients: int, threads: int, site_config: str | None = None) -> FlareJob:
    """Everything ``nvflare simulator`` would otherwise trip over, checked first.

    Raises:
        UsageError: no FLARE job at ``job``; counts below 1; more threads than sites; fewer sites than
            the job needs; a missing site file.
        ConfigError: the job's meta.json or the site file is not what FLARE or clara-fl reads.
    """
    from clara_fl.fl.site.context import read_site_file

    for value, option in ((n_clients, "-n"), (threads, "-t")):
        if value < 1:
            raise UsageError(option, str(value), "expected a whole number of at least 1")
    flare_job = require_flare_job(job)
    if threads > n_clients:
        raise UsageError(
            "-t",
            str(threads),
            f"expected at most the {n_clients} site(s) of -n: FLARE's simulator runs at most one thread per site",
        )
    needed = flare_job.sites_needed()
    if needed and needed[0] > n_clients:
        raise UsageError("-n", str(n_clients), f"the job needs {needed[0]} sites ({needed[1]}): use -n {needed[0]}")
    if site_config is not None:
        read_site_file(require_file(site_config, "--site-config", "site file"))
    return flare_job
