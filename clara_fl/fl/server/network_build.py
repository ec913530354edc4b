"""The server builds the job's network in a confined child process, and keeps only its tensors.

A job's ``train.model`` is config code from outside the server's site: it names a class and its
arguments, and a nested component in those arguments runs while the network is built. The server's
persistor therefore never builds it in FLARE's server job process. It starts

``python -m clara_fl.fl.server.network_build --confinement JSON --confinement-mode MODE --request JSON``

which confines itself first (:mod:`clara_fl.runtime.confinement`: it reads the job's app folder and
the Python installation, writes one private temporary folder, executes nothing but Python, opens no
TCP), then builds the network exactly as before (:func:`clara_fl.workflows.network.build_train_network`,
the server's site values and code policy) and saves its ``state_dict`` with ``torch.save``.

The parent reads that file with ``torch.load(weights_only=True)`` (nothing the child wrote is
unpickled) and puts the tensors into a module (:func:`built_network`) with the same parameters and
buffers under the same names, which is all the persistor (``state_dict``) and FedOpt
(``named_parameters``, ``parameters``, ``state_dict``) use of it. It has no ``forward``.

A failed build is one line naming the config item, read from the child's stderr; no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BuildRequest", "build_network_confined", "built_network", "main"]

OUTPUT_FILE = "network.pt"
ERROR_PREFIX = "network_build: error: "
REPORT_PREFIX = "network_build: "
FORMAT = 1
TIMEOUT_S = 900.0
# The child's exit codes: 2 a config error, 3 confinement refused or failed, 1 anything else.
EXIT_CONFIG, EXIT_CONFINEMENT = 2, 3


@dataclass(frozen=True)
class BuildRequest:
    """What the child builds: the MMAR's network, with the server's site values and code policy.

    Args:
        mmar_root: the MMAR folder (the job's app folder or its custom/).
        train_config: the MMAR's train config, relative to ``mmar_root``.
        environment: the MMAR's environment.json, relative to ``mmar_root``.
        overrides: values on top of the environment.
        site_values: the server's site values (and ``SITE_NAME``), above the job's environment.
        code_policy: ``"restricted"`` or ``"full"``.
        catalog: the server's site catalog (classes and arguments it adds to the restricted policy).
        output_dir: where the child writes ``network.pt``.
        dp_compatible: make the network DP-SGD compatible as the sites do
            (:func:`clara_fl.fl.site.dp.make_dp_compatible`).
    """

    mmar_root: str
    train_config: str
    environment: str
    overrides: dict[str, Any] = field(default_factory=dict)
    site_values: dict[str, Any] = field(default_factory=dict)
    code_policy: str = "restricted"
    catalog: dict[str, Any] = field(default_factory=dict)
    output_dir: str = ""
    dp_compatible: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BuildRequest:
        return cls(**json.loads(text))


def _network_class(class_name: str) -> type:
    import torch  # not at module level: the child confines itself before torch starts its threads

    class Network(torch.nn.Module):
        """The job's network as the server keeps it: its parameters and buffers by name, no forward."""

    name = class_name if class_name.isidentifier() else "BuiltNetwork"
    # FLARE records type(model).__name__ in every saved global model ({"train": {"model": "UNet"}})
    Network.__name__ = Network.__qualname__ = name
    return Network


def built_network(state: Mapping[str, Any], parameters: Mapping[str, bool], class_name: str = "BuiltNetwork") -> Any:
    """A module holding exactly ``state``'s tensors under the same dotted names.

    Args:
        state: a network's ``state_dict`` (names to tensors), in its order.
        parameters: which of those names are parameters (with ``requires_grad``); the rest are buffers.
        class_name: the built network's class name (what ``type(model).__name__`` says).

    Raises:
        ValueError: a name that is not a tensor, empty, or clashes with another.
    """
    import torch

    root = _network_class(class_name)()
    # the tree is built here from nothing, so these two record everything registered in it, by dotted name
    modules: dict[str, Any] = {"": root}
    tensors: set[str] = set()
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"'{name}' is not a tensor")
        *path, leaf = name.split(".")
        if not leaf or not all(path):
            raise ValueError(f"'{name}' is not a parameter or buffer name")
        module = root
        for depth, part in enumerate(path, start=1):
            prefix = ".".join(path[:depth])
            if prefix not in modules:
                child = torch.nn.Module()
                module.add_module(part, child)
                modules[prefix] = child
            module = modules[prefix]
        if name in tensors or name in modules:
            raise ValueError(f"'{name}' appears twice")
        tensors.add(name)
        if name in parameters:
            module.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=bool(parameters[name])))
        else:
            module.register_buffer(leaf, value)
    return root


# -- the parent: the server's persistor ----------------------------------------------------------------------


def build_network_confined(
    app_dir: str, request: BuildRequest, mode: str = "preferred", *, timeout: float = TIMEOUT_S
) -> tuple[Any, str]:
    """Build ``request``'s network in a confined child; return it (:func:`built_network`) and the
    child's confinement line (for the log).

    Args:
        app_dir: the job's app folder: what the child may read besides the Python installation.
        request: what to build (its ``output_dir`` is replaced by a private temporary folder).
        mode: the server's confinement mode (``required``, ``preferred``, ``off``).
        timeout: seconds the build may take.

    Raises:
        ConfigError: the build failed; one line, the child's own where it gave one.
        ValueError: an unknown mode.
    """
    import torch

    from clara_fl.config.errors import ConfigError
    from clara_fl.runtime.confinement import (
        check_confinement_mode,
        confined_environment,
        make_temp_dir,
        process_confinement,
        spawn_args,
    )

    check_confinement_mode(mode)
    output = make_temp_dir("clara-fl-network-")
    try:
        request = BuildRequest(**{**asdict(request), "output_dir": output})
        conf = process_confinement(read_only=(os.path.abspath(app_dir),), read_write=(output,))
        command = [
            sys.executable,
            "-m",
            "clara_fl.fl.server.network_build",
            *spawn_args(conf, mode),
            "--request",
            request.to_json(),
        ]
        try:
            done = subprocess.run(
                command,
                cwd=output,
                env=confined_environment(output),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise ConfigError(f"building the network took more than {timeout:.0f} s", path="train.model") from None
        if done.returncode != 0:
            raise ConfigError(_child_error(done.returncode, done.stderr))
        try:
            saved = torch.load(os.path.join(output, OUTPUT_FILE), map_location="cpu", weights_only=True)
            network = built_network(saved["state_dict"], saved["parameters"], str(saved["class_name"]))
        except Exception as e:  # a child that exits 0 without a valid file
            raise ConfigError(f"the network build process wrote no usable network ({type(e).__name__}: {e})") from None
        # the child's first line, printed before any job code ran (a job could print a line like it later)
        first = (done.stdout.splitlines() or [""])[0]
        return network, first[len(REPORT_PREFIX) :] if first.startswith(REPORT_PREFIX) else ""
    finally:
        shutil.rmtree(output, ignore_errors=True)


def _child_error(code: int, stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line[len(ERROR_PREFIX) :] for line in lines if line.startswith(ERROR_PREFIX)]
    if errors:
        return errors[-1]
    last = f": {lines[-1].strip()[:300]}" if lines else ""
    return f"the network build process ended with exit code {code}{last}"


# -- the child -------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clara_fl.fl.server.network_build --confinement J --confinement-mode M --request J``.

    Confines itself before anything else, builds the network and writes ``network.pt``. Errors are
    one line on stderr (``network_build: error: ...``).
    """
    from clara_fl.runtime.confinement import ConfinementError, confine_child_from_argv

    try:
        report, rest = confine_child_from_argv(argv)
    except ConfinementError as e:
        print(f"{ERROR_PREFIX}{e}", file=sys.stderr)
        return EXIT_CONFINEMENT
    print(f"{REPORT_PREFIX}{report.describe()}", flush=True)
    if len(rest) != 2 or rest[0] != "--request":
        print(f"{ERROR_PREFIX}usage: --request JSON", file=sys.stderr)
        return EXIT_CONFIG
    try:
        request = BuildRequest.from_json(rest[1])
    except (ValueError, TypeError) as e:
        print(f"{ERROR_PREFIX}a malformed request: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return _build(request)


def _build(request: BuildRequest) -> int:
    import torch

    from clara_fl.config.errors import ConfigError, describe_failure
    from clara_fl.config.restrictions import CodePolicy
    from clara_fl.workflows.network import build_train_network

    try:
        network = build_train_network(
            request.mmar_root,
            request.train_config,
            request.environment,
            request.overrides,
            extra_environment=request.site_values,
            code_policy=CodePolicy(request.code_policy, catalog=request.catalog),
        )
        if not isinstance(network, torch.nn.Module):
            raise ConfigError(f"must build a torch.nn.Module, got {type(network).__name__}", path="train.model")
        if request.dp_compatible:
            from clara_fl.fl.site.dp import make_dp_compatible

            make_dp_compatible(network)
        state = network.state_dict()
        bad = [name for name, value in state.items() if not isinstance(value, torch.Tensor)]
        if bad:
            raise ConfigError(f"the network's state holds a non-tensor entry '{bad[0]}'", path="train.model")
        saved = {
            "format": FORMAT,
            "class_name": type(network).__name__,
            "state_dict": {name: value.detach().cpu() for name, value in state.items()},
            "parameters": {name: p.requires_grad for name, p in network.named_parameters()},
        }
        torch.save(saved, os.path.join(request.output_dir, OUTPUT_FILE))
    except ConfigError as e:
        print(f"{ERROR_PREFIX}{e}".replace("\n", " "), file=sys.stderr)
        return EXIT_CONFIG
    except Exception as e:
        print(f"{ERROR_PREFIX}cannot build the network: {describe_failure(e)}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
