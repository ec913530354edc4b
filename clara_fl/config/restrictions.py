"""What a config may name and where it may write under the restricted policy.

The restricted policy is for configs a site did not write (every FL job by default, ``--safe``).
Besides config code (see :mod:`clara_fl.config.safe_code`) a config names classes to build and
paths to read and write. Under this policy:

* a component's class comes from MONAI, PyTorch, Ignite or clara-fl's components, or from the
  MMAR's own ``custom/`` folder (BYOC code, which FLARE runs only for submitters holding the
  ``byoc`` right); it must be a class, the module is checked before it is imported, and the
  library parts that load code, fetch from the network or unpickle are refused;
* arguments that switch unpickling or downloads on are refused;
* every path the config supplies for writing (``MMAR_*`` variables, ``save_dir``, ``output_dir``,
  ``log_dir``, ``cache_dir`` ... and any absolute or ``..`` path argument) must resolve, symlinks
  followed, inside the MMAR folder (at an FL site: the job's app folder);
* data is read only from where the site says (its site file), when the site says it.
"""

from __future__ import annotations

import importlib.machinery
import inspect
import os
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clara_fl.config.errors import ConfigError, json_path

__all__ = ["CodePolicy", "Restrictions", "WRITE_PATH_ARGS", "from_a_custom_folder", "looks_like_escape"]

ALLOWED_ROOTS = ("monai", "torch", "ignite")
REFUSED_MODULES = (
    "monai.bundle",
    "monai.apps.utils",
    "monai.apps.datasets",
    "monai.apps.mmars",
    "monai.apps.auto3dseg",
    "monai.auto3dseg",
    "monai.utils",
    "monai.config",
    "torch.hub",
    "torch.package",
    "torch.utils.cpp_extension",
    "torch.jit",
    "torch.onnx",
    "torch.distributed",
    "torch.multiprocessing",
    "torch.serialization",
    "torch.testing",
    "torch.utils.benchmark",
    "torch.utils.bottleneck",
    "torch.utils.data.datapipes",
    "torch.export",
    "torch.compiler",
    "torch._",
    "ignite.contrib",
    "ignite.distributed",
)
# Arguments whose value is an output location, checked even when relative (libraries resolve those
# against the working directory, which at an FL site is the site workspace, not the job).
WRITE_PATH_ARGS = frozenset(
    {
        "save_dir",
        "output_dir",
        "log_dir",
        "cache_dir",
        "root_dir",
        "dirname",
        "output_path",
        "save_path",
        "ckpt_dir",
        "out_dir",
        "output_file",
        "logdir",
        "filename_or_obj",
    }
)
ANY_VALUE = object()
# (argument, value that is refused): unpickling, downloads, remote code.
REFUSED_ARGS: dict[str, Any] = {
    "allow_pickle": True,
    "weights_only": False,
    "download": True,
    "trust_remote_code": True,
    "pickle_module": ANY_VALUE,
}
WRITTEN_VARIABLE_PREFIX = "MMAR_"


@dataclass(frozen=True)
class CodePolicy:
    """A site's code policy: ``"full"`` or ``"restricted"``, and where it keeps its data.

    ``data_roots`` are the folders data may be read from under the restricted policy; ``None``
    means the runner did not say (standalone ``--safe``): data reads are not confined.
    """

    name: str = "restricted"
    data_roots: tuple[str, ...] | None = None

    @classmethod
    def of(cls, policy: str | CodePolicy) -> CodePolicy:
        return policy if isinstance(policy, CodePolicy) else cls(name=policy)


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _inside(path: str, roots: Iterable[str]) -> bool:
    real = _real(path)
    for root in roots:
        root = _real(root)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def from_a_custom_folder(file: str, module_name: str) -> bool:
    """Whether module ``module_name`` was loaded from ``<app>/custom/`` (an MMAR's BYOC folder), and not
    from the Python installation."""
    parts = os.path.normpath(os.path.realpath(file)).split(os.sep)
    names = module_name.split(".")
    if parts[-1] == "__init__.py":
        parts = parts[:-1]
    else:
        parts[-1] = os.path.splitext(parts[-1])[0]
    inside_custom = parts[-len(names) :] == names and len(parts) > len(names) and parts[-len(names) - 1] == "custom"
    paths = sysconfig.get_paths()
    installed = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return inside_custom and not _inside(file, installed | {sys.base_prefix})


def looks_like_escape(value: str) -> bool:
    """Whether a path may lead out of the folder it is joined to: absolute, ``~`` or with a ``..`` part."""
    return os.path.isabs(value) or value.startswith("~") or ".." in value.replace("\\", "/").split("/")


@dataclass
class Restrictions:
    """The restricted policy's checks for one MMAR (``mmar_root``) at one site."""

    mmar_root: str
    data_roots: tuple[str, ...] | None = None
    #: Modules the runtime adds to the allowed libraries (its own components).
    extra_roots: tuple[str, ...] = ()
    _custom: str = field(init=False)

    def __post_init__(self) -> None:
        self._custom = os.path.join(self.mmar_root, "custom")

    def _allowed(self, module_name: str) -> bool:
        return any(module_name == r or module_name.startswith(r + ".") for r in ALLOWED_ROOTS + self.extra_roots)

    # -- classes -------------------------------------------------------------------------------------

    def _is_custom(self, module_name: str) -> bool:
        top = module_name.split(".")[0]
        return os.path.isdir(self._custom) and importlib.machinery.PathFinder.find_spec(top, [self._custom]) is not None

    def check_module(self, module_name: str) -> None:
        """Before importing ``module_name`` for a ``path`` component."""
        if self._is_custom(module_name):
            return
        if not self._allowed(module_name):
            raise ConfigError(
                f"the restricted policy builds classes from MONAI, PyTorch, Ignite, clara-fl or the MMAR's custom/ "
                f"folder only; '{module_name}' is none of them"
            )
        self._refuse_module(module_name)

    def _refuse_module(self, module_name: str) -> None:
        for refused in REFUSED_MODULES:
            if module_name == refused or module_name.startswith(refused if refused.endswith("_") else refused + "."):
                raise ConfigError(f"the restricted policy does not build classes from '{refused}' (it can load code)")

    def check_target(self, target: Any, label: str) -> None:
        """After locating a component's class: a class, defined where check_module allows."""
        module_name = getattr(target, "__module__", "") or ""
        if self._is_custom(module_name):
            file = getattr(inspect.getmodule(target), "__file__", None)
            # The job's own BYOC module; or the same module imported earlier from another app folder of
            # this process (a simulator runs several sites' apps in one process) - user code either way,
            # never the Python installation's (a job's custom/subprocess.py does not admit subprocess.Popen).
            if file and (_inside(file, [self._custom]) or from_a_custom_folder(file, module_name)):
                return
        if not inspect.isclass(target):
            raise ConfigError(f"'{label}' is not a class: the restricted policy builds classes only")
        if not self._allowed(module_name):
            raise ConfigError(f"'{label}' is defined in '{module_name}', outside what the restricted policy builds")
        self._refuse_module(module_name)

    # -- arguments and paths ---------------------------------------------------------------------------

    def check_args(self, args: Mapping[str, Any], path: str) -> None:
        """Refuse unpickling/download switches and output paths outside the MMAR, at any depth of ``args``."""
        for key, value in args.items():
            where = json_path(path, "args", key) if path else key
            self._check_value(key, value, where)

    def _check_value(self, key: str, value: Any, where: str) -> None:
        if key in REFUSED_ARGS and value is not None and (REFUSED_ARGS[key] is ANY_VALUE or value == REFUSED_ARGS[key]):
            raise ConfigError(f"'{key}: {value!r}' is refused by the restricted policy (it can load code)", path=where)
        if isinstance(value, Mapping):
            for k, v in value.items():
                self._check_value(k, v, json_path(where, k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                self._check_value(key, v, json_path(where, i))
        elif isinstance(value, str) and not value.startswith(("#", "@")) and not value.lstrip().startswith("lambda"):
            if key in WRITE_PATH_ARGS:
                self.check_write(value, where)
            elif looks_like_escape(value):
                self.check_read(value, where)

    def check_write(self, value: str, where: str) -> None:
        """An output location: inside the MMAR folder, symlinks followed."""
        if not _inside(os.path.join(os.getcwd(), os.path.expanduser(value)), [self.mmar_root]):
            raise ConfigError(
                f"'{value}' is outside this MMAR's folder {self.mmar_root}: the restricted policy writes only inside "
                "it (use a path under {MMAR_ROOT}, e.g. '{MMAR_CKPT_DIR}')",
                path=where,
            )

    def check_read(self, value: str, where: str, what: str = "path") -> None:
        """An input location: inside the MMAR folder or, when the site named them, its data folders."""
        roots = [self.mmar_root, *(self.data_roots or ())]
        if self.data_roots is None and not looks_like_escape(value):
            return
        if not _inside(os.path.join(os.getcwd(), os.path.expanduser(value)), roots):
            named = ", ".join(roots)
            raise ConfigError(
                f"{what} '{value}' is outside the folders this site allows ({named}); data locations come from the "
                "site's own site file, not from the job",
                path=where,
            )

    def check_data(self, value: str, where: str) -> None:
        """A datalist or data folder named by the config."""
        if self.data_roots is None:
            return
        self.check_read(value, where, what="data location")

    def check_variables(self, variables: Mapping[str, Any], file: str | None) -> None:
        """``MMAR_*`` path variables (checkpoints, eval output, TorchScript) stay inside the MMAR folder."""
        for name, value in variables.items():
            if name.startswith(WRITTEN_VARIABLE_PREFIX) and name != "MMAR_ROOT" and isinstance(value, str) and value:
                try:
                    self.check_write(value, name)
                except ConfigError as e:
                    e.located(file, name)
                    raise
