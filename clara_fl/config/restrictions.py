"""What a config may build, name, read and write under the restricted policy.

The restricted policy is for configs a site did not write (every FL job by default, ``--safe``).
Besides config code (see :mod:`clara_fl.config.safe_code`) a config names classes to build, values
for their arguments and paths to read and write. Under this policy:

* a component's class is one the catalog admits (:mod:`clara_fl.config.policy`: the classes real
  Clara configs use, families of classes whose constructors only store values, and the site's own
  ``"catalog"`` entries), or a class from the MMAR's own ``custom/`` folder (BYOC code, which FLARE
  runs only for submitters holding the ``byoc`` right); a ``path`` module is checked before it is
  imported, and the library parts that load code, fetch from the network or unpickle are refused;
* every argument value is judged after it is resolved, by what the class does with it: names of
  Python objects only where the class takes one and only from its list, switches by the truthiness the
  library reads them with, pass-through options refused, and every path the class writes (its library
  default included) inside the MMAR folder (at an FL site: the job's app folder);
* data is read only from where the site says (its site file), and from the job's folder.
"""

from __future__ import annotations

import importlib.machinery
import inspect
import os
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.config.policy import ArgumentJudge, Catalog, class_name_of, file_name_problem, looks_like_escape

__all__ = [
    "CodePolicy",
    "Restrictions",
    "from_a_custom_folder",
    "import_is_harmless",
    "looks_like_escape",
]

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
WRITTEN_VARIABLE_PREFIX = "MMAR_"
SITE_CATALOG_HINT = 'a site that trusts it adds it to the "catalog" of its clara_fl_site.json'


@dataclass(frozen=True)
class CodePolicy:
    """A site's code policy: ``"full"`` or ``"restricted"``, where it keeps its data, and its catalog.

    ``data_roots`` are the folders data may be read from under the restricted policy; ``None``
    means the runner did not say (standalone ``--safe``): data reads are not confined. ``catalog`` is
    the site file's ``"catalog"``: classes and arguments the site adds to the restricted policy's
    catalog (format: :mod:`clara_fl.config.policy.site`).
    """

    name: str = "restricted"
    data_roots: tuple[str, ...] | None = None
    #: the site file's ``"catalog"``: classes and arguments a site adds to the restricted policy's catalog
    catalog: Mapping[str, Any] = field(default_factory=dict)

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


def _under(module_name: str, trees: Iterable[str]) -> bool:
    return any(module_name == tree or module_name.startswith(tree + ".") for tree in trees)


def _refused_module(module_name: str) -> str | None:
    for refused in REFUSED_MODULES:
        if module_name == refused or module_name.startswith(refused if refused.endswith("_") else refused + "."):
            return refused
    return None


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


@cache
def _library_trees() -> tuple[str, ...]:
    return Catalog().module_trees()


def import_is_harmless(module_name: str) -> bool:
    """Whether importing ``module_name`` runs no code that the restricted policy would not admit: it is
    imported already, it is in a module tree of the built-in catalog, or it is BYOC code from an MMAR's
    ``custom/`` folder on ``sys.path``. Decided without importing anything.

    Args:
        module_name: a dotted module name (the module part of a component's ``path``).
    """
    if not module_name:
        return False
    if module_name in sys.modules:
        return True
    if _refused_module(module_name) or any(p.startswith("_") for p in module_name.split(".")):
        return False
    if _under(module_name, _library_trees()):
        return True
    top = module_name.split(".")[0]
    spec = importlib.machinery.PathFinder.find_spec(top)  # where a plain import would find it, on sys.path
    origin = spec.origin if spec is not None else None
    return bool(origin) and from_a_custom_folder(str(origin), top)


@dataclass
class Restrictions:
    """The restricted policy's checks for one MMAR (``mmar_root``) at one site.

    Args:
        mmar_root: the job's folder: everything written goes inside it.
        data_roots: the site's data folders (None: data reads are not confined).
        extra_roots: modules the runtime adds to what may be imported for a ``path`` (its own components).
        catalog: the site file's ``"catalog"`` (see :mod:`clara_fl.config.policy.site`).

    Raises:
        ConfigError: the site's catalog is malformed.
    """

    mmar_root: str
    data_roots: tuple[str, ...] | None = None
    extra_roots: tuple[str, ...] = ()
    catalog: Mapping[str, Any] = field(default_factory=dict)
    _custom: str = field(init=False)
    _catalog: Catalog = field(init=False)
    _judge: ArgumentJudge = field(init=False)

    def __post_init__(self) -> None:
        self._custom = os.path.join(self.mmar_root, "custom")
        self._catalog = Catalog(self.catalog)
        self._judge = ArgumentJudge(self._catalog, self)

    def _allowed(self, module_name: str) -> bool:
        return _under(module_name, self._catalog.module_trees() + tuple(self.extra_roots))

    # -- classes -------------------------------------------------------------------------------------

    def _is_custom(self, module_name: str) -> bool:
        top = module_name.split(".")[0]
        return os.path.isdir(self._custom) and importlib.machinery.PathFinder.find_spec(top, [self._custom]) is not None

    def is_byoc(self, target: Any) -> bool:
        """Whether ``target`` is the job's own BYOC code: defined in a module of the MMAR's ``custom/`` folder."""
        module_name = getattr(target, "__module__", "") or ""
        if not self._is_custom(module_name):
            return False
        file = getattr(inspect.getmodule(target), "__file__", None)
        # The job's own BYOC module; or the same module imported earlier from another app folder of
        # this process (a simulator runs several sites' apps in one process) - user code either way,
        # never the Python installation's (a job's custom/subprocess.py does not admit subprocess.Popen).
        return bool(file) and (_inside(str(file), [self._custom]) or from_a_custom_folder(str(file), module_name))

    def check_module(self, module_name: str) -> None:
        """Before importing ``module_name`` for a ``path`` component."""
        if self._is_custom(module_name):
            return
        if not self._allowed(module_name):
            raise ConfigError(
                "the restricted policy builds catalogued classes of MONAI, PyTorch, Ignite and clara-fl, classes of "
                f"the site's catalog and of the MMAR's custom/ folder only; '{module_name}' is none of them"
            )
        if any(part.startswith("_") for part in module_name.split(".")):
            raise ConfigError(f"the restricted policy does not import private modules ('{module_name}')")
        self._refuse_module(module_name)

    def _refuse_module(self, module_name: str) -> None:
        refused = _refused_module(module_name)
        if refused:
            raise ConfigError(f"the restricted policy does not build classes from '{refused}' (it can load code)")

    def check_target(self, target: Any, label: str) -> None:
        """After locating a component's class: a class the catalog admits, or BYOC."""
        if self.is_byoc(target):
            return
        if not inspect.isclass(target):
            raise ConfigError(f"'{label}' is not a class: the restricted policy builds classes only")
        module_name = getattr(target, "__module__", "") or ""
        self._refuse_module(module_name)
        if self._catalog.rule_for(target) is None:
            if not self._allowed(module_name):
                raise ConfigError(f"'{label}' is defined in '{module_name}', outside what the restricted policy builds")
            raise self._not_catalogued(target, label)

    def _not_catalogued(self, target: Any, label: str) -> ConfigError:
        dotted = class_name_of(target)
        return ConfigError(
            f"'{label}' ({dotted}) is not in the restricted policy's catalog; {SITE_CATALOG_HINT}: "
            f'{{"classes": {{"{dotted}": {{"args": {{...}}}}}}}} (docs/fl.md)'
        )

    # -- arguments -----------------------------------------------------------------------------------

    def judge_args(self, target: Any, label: str, args: Mapping[str, Any], path: str) -> None:
        """Judge a component's resolved arguments (dry run: with :class:`~clara_fl.config.policy.Planned`
        stand-ins for what is not built yet; real build: the real values, just before construction).

        Args:
            target: the component's class.
            label: the class as the config names it.
            args: its keyword arguments, resolved.
            path: the component's JSON path.

        Raises:
            ConfigError: a value the policy refuses, with the JSON path down to the argument.
        """
        if self.is_byoc(target):
            return  # code the site admitted with FLARE's byoc right; its arguments are its own business
        rule = self._catalog.rule_for(target)
        if rule is None:
            raise self._not_catalogued(target, label)
        self._judge.judge(target, label, rule, args, path)

    def check_file_name(self, value: Any, where: str) -> None:
        """A name that becomes part of a file name (a metric's ``log_label`` names MetricsSaver's files)."""
        problem = file_name_problem(value) if isinstance(value, str) else None
        if problem:
            raise ConfigError(f"'{value}' cannot be part of a file name: {problem}", path=where)

    # -- paths ---------------------------------------------------------------------------------------

    def _no_home(self, value: str, where: str) -> None:
        if value.startswith("~"):
            raise ConfigError(
                f"'{value}': the restricted policy refuses paths starting with '~' (libraries differ on expanding "
                "it); use a path under {MMAR_ROOT}",
                path=where,
            )

    def check_write(self, value: str, where: str, what: str = "") -> None:
        """An output location: inside the MMAR folder, symlinks followed, a relative one against the working
        directory (as libraries resolve it)."""
        self._no_home(value, where)
        if not _inside(os.path.join(os.getcwd(), value), [self.mmar_root]):
            relative = "" if os.path.isabs(value) else f"; relative paths are resolved against {os.getcwd()}"
            raise ConfigError(
                f"{what + ' ' if what else ''}'{value}' is outside this MMAR's folder {self.mmar_root}: the "
                "restricted policy writes only inside it (use a path under {MMAR_ROOT}, e.g. '{MMAR_CKPT_DIR}')"
                + relative,
                path=where,
            )

    def check_read(self, value: str, where: str, what: str = "path") -> None:
        """An input location: inside the MMAR folder or, when the site named them, its data folders."""
        self._no_home(value, where)
        roots = [self.mmar_root, *(self.data_roots or ())]
        if self.data_roots is None and not looks_like_escape(value):
            return
        if not _inside(os.path.join(os.getcwd(), value), roots):
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
