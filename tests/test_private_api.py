"""Every private attribute of torch, ignite, MONAI and FLARE, and every ``nvflare.private`` module, that clara-fl uses
outside clara_fl/fl/flare_internals/ is listed, still exists, and is used only through clara_fl.runtime.private_api or
where its entry says: a library upgrade that breaks one fails here, naming it, and so does a new reach-in that is not
listed (found by tests/private_reach.py)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clara_fl.runtime.private_api import PRIVATE_ATTRIBUTES, PRIVATE_MODULES, PrivateAttribute, PrivateModule
from tests.private_reach import ReachIn, find_reach_ins

PACKAGE = Path(__file__).resolve().parents[1] / "clara_fl"
# the patches of FLARE's internals: gated by FLARE version and site switch instead (tests/test_flare_internals.py)
INTERNALS = "fl/flare_internals/"
REGISTRY = "runtime/private_api.py"
# users' scripts shipped as data (python job.py), not modules of the package (as in tests/test_layers.py)
DATA_SCRIPTS = "resources/examples/"


def _ignite_engine(_: Path) -> Any:
    from ignite.engine import Engine

    return Engine(lambda engine, batch: None)


def _monai_checkpoint_saver(tmp_path: Path) -> Any:
    import torch
    from monai.handlers import CheckpointSaver

    net = torch.nn.Linear(1, 1)
    return CheckpointSaver(str(tmp_path), {"model": net}, save_final=True, save_key_metric=True, save_interval=1)


def _flare_persistor(_: Path) -> Any:
    from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

    return PTFileModelPersistor  # a method: the class is enough


def _flare_log_writer(_: Path) -> Any:
    from nvflare.app_opt.tracking.tb.tb_writer import TBWriter

    return TBWriter()


def _flare_comm_server(_: Path) -> Any:
    from nvflare.apis.impl.wf_comm_server import WFCommServer

    return WFCommServer()


def _flare_controller(_: Path) -> Any:
    from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather

    return ScatterAndGather()


def _flare_model_selector(_: Path) -> Any:
    from nvflare.app_common.widgets.intime_model_selector import IntimeModelSelector

    return IntimeModelSelector()


def _flare_job_config(_: Path) -> Any:
    from nvflare.job_config.fed_job_config import FedJobConfig

    return FedJobConfig  # a method: the class is enough


def _flare_he_cross_site_eval(_: Path) -> Any:
    pytest.importorskip("tenseal")
    from nvflare.app_opt.he.cross_site_model_eval import HECrossSiteModelEval

    return HECrossSiteModelEval  # a method: the class is enough


def _flare_cross_site_eval(_: Path) -> Any:
    from nvflare.app_common.workflows.cross_site_eval import CrossSiteEval

    return CrossSiteEval()


# owner -> something that holds the attribute (an instance for attributes set in __init__)
HOLDERS: dict[str, Callable[[Path], Any]] = {
    "ignite.engine.Engine": _ignite_engine,
    "nvflare.job_config.fed_job_config.FedJobConfig": _flare_job_config,
    "monai.handlers.CheckpointSaver": _monai_checkpoint_saver,
    "nvflare.app_opt.pt.file_model_persistor.PTFileModelPersistor": _flare_persistor,
    "nvflare.app_common.tracking.log_writer.LogWriter": _flare_log_writer,
    "nvflare.apis.impl.wf_comm_server.WFCommServer": _flare_comm_server,
    "nvflare.apis.impl.controller.Controller": _flare_controller,
    "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather": _flare_controller,
    "nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector": _flare_model_selector,
    "nvflare.app_opt.he.cross_site_model_eval.HECrossSiteModelEval": _flare_he_cross_site_eval,
    "nvflare.app_common.workflows.cross_site_eval.CrossSiteEval": _flare_cross_site_eval,
}


def entry_id(entry: PrivateAttribute) -> str:
    return f"{entry.owner}.{entry.attribute}"


@pytest.mark.parametrize("entry", PRIVATE_ATTRIBUTES, ids=entry_id)
def test_each_listed_private_attribute_still_exists_in_the_installed_library(
    entry: PrivateAttribute, tmp_path: Path
) -> None:
    module, _, name = entry.owner.rpartition(".")
    owner = getattr(importlib.import_module(module), name)
    holder = HOLDERS[entry.owner](tmp_path)

    if entry.set_in:  # set by a method the library calls later: that method still assigns it
        exists = f"self.{entry.attribute} =" in inspect.getsource(getattr(owner, entry.set_in))
    else:
        assert isinstance(holder, owner) or holder is owner, f"{entry_id(entry)}: the test's holder is not a {name}"
        exists = hasattr(holder, entry.attribute)

    assert exists, (
        f"{entry.library} no longer has {entry_id(entry)} (private): clara-fl relies on it because {entry.reason} "
        "Replace the accessor in clara_fl/runtime/private_api.py."
    )


@pytest.mark.parametrize("entry", PRIVATE_MODULES, ids=lambda e: e.module)
def test_each_listed_private_module_still_exists_in_the_installed_library(entry: PrivateModule) -> None:
    found = importlib.util.find_spec(entry.module)

    assert found is not None, (
        f"{entry.library} no longer has {entry.module}: clara-fl relies on it because {entry.reason}"
    )


def test_every_entry_has_a_reason_and_a_holder_to_pin_it() -> None:
    libraries = {"torch", "pytorch-ignite", "monai", "nvflare"}

    assert all(entry.reason and entry.library in libraries for entry in PRIVATE_ATTRIBUTES)
    assert all(entry.reason and entry.library in libraries and entry.used_in for entry in PRIVATE_MODULES)
    assert {entry.owner for entry in PRIVATE_ATTRIBUTES} <= set(HOLDERS)


@functools.cache
def _package_sources() -> dict[str, str]:
    sources = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith(DATA_SCRIPTS):
            sources[relative] = path.read_text(encoding="utf-8")
    return sources


@functools.cache
def _package_reach_ins() -> tuple[ReachIn, ...]:
    return tuple(find_reach_ins(_package_sources()))


def _listed(reach_in: ReachIn) -> bool:
    """In the internals package, in the registry itself, or where its registry entry says it is used."""
    if reach_in.file.startswith(INTERNALS):
        return True
    if reach_in.kind == "private module":
        entries: list[Any] = [e for e in PRIVATE_MODULES if e.module == reach_in.name]
    else:
        entries = [e for e in PRIVATE_ATTRIBUTES if e.attribute == reach_in.name]
    return any(reach_in.file == REGISTRY or reach_in.file in e.used_in for e in entries)


def test_every_reach_into_another_librarys_private_names_is_listed_or_in_the_flare_internals_package() -> None:
    unlisted = [str(r) for r in _package_reach_ins() if not _listed(r)]

    assert not unlisted, (
        "list these in clara_fl/runtime/private_api.py (and use an accessor there), or move the patch into "
        "clara_fl/fl/flare_internals/ behind a gate:\n" + "\n".join(unlisted)
    )


def test_every_listed_use_is_still_made_where_the_entry_says() -> None:
    found = {(r.file, r.name) for r in _package_reach_ins()}
    listed = {(file, e.attribute) for e in PRIVATE_ATTRIBUTES for file in e.used_in}
    listed |= {(file, e.module) for e in PRIVATE_MODULES for file in e.used_in}

    assert listed <= found, f"listed but no longer used there (drop them from used_in): {sorted(listed - found)}"


# ---- the checker finds a planted reach-in of each kind, and nothing of clara-fl's own --------------------------

PLANTED_FOREIGN = """
def step(engine):
    return engine._event_handlers
"""
PLANTED_COMPUTED_NAME = """
def hook(component, name):
    attribute = "_" + name
    setattr(component, attribute, True)
"""
PLANTED_INHERITED = """
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather


class Workflow(ScatterAndGather):
    def rounds_left(self):
        return self._num_rounds - self._rounds_done

    def start(self):
        self._rounds_done = 0
"""
PLANTED_INHERITED_PAST_A_MIXIN = """
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather

from clara_fl.fl.server.mine import Mixin


class Workflow(Mixin, ScatterAndGather):
    def sites(self):
        return self._engine.get_clients(), self._own_state, super()._process_result(None, None)
"""
CLARA_MIXIN = """
class Mixin:
    def __init__(self):
        self._own_state = 1
"""
PLANTED_OVERWRITTEN = """
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather


class Workflow(ScatterAndGather):
    def restart(self, rounds):
        self._num_rounds = rounds
"""
PLANTED_OVERRIDDEN = """
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather


class Workflow(ScatterAndGather):
    def _process_train_result(self, client_task, fl_ctx):
        return None
"""
PLANTED_COMPUTED_NAME_ON_SELF = """
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather


class Workflow(ScatterAndGather):
    def option(self, name):
        return getattr(self, "_" + name)
"""
PLANTED_PRIVATE_MODULE = """
from nvflare.private.fed.server.job_runner import JobRunner
"""


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ({"fl/a.py": PLANTED_FOREIGN}, [("fl/a.py", 3, "_event_handlers", "foreign")]),
        ({"fl/a.py": PLANTED_COMPUTED_NAME}, [("fl/a.py", 4, "attribute", "foreign")]),
        ({"fl/a.py": PLANTED_INHERITED}, [("fl/a.py", 7, "_num_rounds", "inherited")]),
        ({"fl/a.py": PLANTED_OVERWRITTEN}, [("fl/a.py", 7, "_num_rounds", "inherited")]),
        ({"fl/a.py": PLANTED_OVERRIDDEN}, [("fl/a.py", 6, "_process_train_result", "inherited")]),
        ({"fl/a.py": PLANTED_COMPUTED_NAME_ON_SELF}, [("fl/a.py", 7, "'_' + name", "inherited")]),
        (
            {"fl/server/b.py": PLANTED_INHERITED_PAST_A_MIXIN, "fl/server/mine.py": CLARA_MIXIN},
            [("fl/server/b.py", 9, "_engine", "inherited"), ("fl/server/b.py", 9, "_process_result", "inherited")],
        ),
        (
            {"apps/c.py": PLANTED_PRIVATE_MODULE},
            [("apps/c.py", 2, "nvflare.private.fed.server.job_runner", "private module")],
        ),
    ],
    ids=[
        "attribute",
        "computed-name",
        "inherited",
        "overwritten",
        "overridden",
        "computed-name-on-self",
        "inherited-past-a-clara-mixin",
        "private-module",
    ],
)
def test_a_planted_reach_in_is_found_with_its_file_and_line(sources: dict[str, str], expected: list[tuple]) -> None:
    found = [(r.file, r.line, r.name, r.kind) for r in find_reach_ins(sources)]

    assert found == expected


@pytest.mark.parametrize(
    ("planted", "name"),
    [
        (PLANTED_FOREIGN, "_event_handlers"),
        (PLANTED_INHERITED, "_num_rounds"),
        (PLANTED_PRIVATE_MODULE, "nvflare.private.fed.server.job_runner"),
    ],
    ids=["foreign", "inherited", "private-module"],
)
def test_a_planted_reach_in_fails_the_completeness_check(planted: str, name: str) -> None:
    sources = {**_package_sources(), "fl/server/planted.py": planted}

    unlisted = [(r.file, r.name) for r in find_reach_ins(sources) if not _listed(r)]

    assert unlisted == [("fl/server/planted.py", name)]


def test_clara_fls_own_private_names_are_not_reach_ins() -> None:
    own = """
class Table:
    def __init__(self):
        self._values = {}


def fill(table):
    table._values["x"] = 1
    return table._values
"""

    assert find_reach_ins({"config/table.py": own}) == []
