"""Every private attribute of ignite, MONAI and FLARE that clara-fl uses is listed, still exists, and is used only
through clara_fl.runtime.private_api: a library upgrade that breaks one fails here, naming it."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clara_fl.runtime.private_api import PRIVATE_ATTRIBUTES, PrivateAttribute

PACKAGE = Path(__file__).resolve().parents[1] / "clara_fl"


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

    assert isinstance(holder, owner) or holder is owner, f"{entry_id(entry)}: the test's holder is not a {name}"
    assert hasattr(holder, entry.attribute), (
        f"{entry.library} no longer has {entry_id(entry)} (private): clara-fl relies on it because {entry.reason} "
        "Replace the accessor in clara_fl/runtime/private_api.py."
    )


def test_every_entry_has_a_reason_and_a_holder_to_pin_it() -> None:
    assert all(entry.reason and entry.library in {"pytorch-ignite", "monai", "nvflare"} for entry in PRIVATE_ATTRIBUTES)
    assert {entry.owner for entry in PRIVATE_ATTRIBUTES} <= set(HOLDERS)


def test_no_module_but_private_api_reaches_into_a_listed_attribute() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "runtime/private_api.py":
            continue
        text = path.read_text(encoding="utf-8")
        for entry in PRIVATE_ATTRIBUTES:
            if relative in entry.used_in:
                continue
            if re.search(rf"[.\"']{re.escape(entry.attribute)}\b", text):
                offenders.append(f"{relative}: {entry.attribute}")
    assert not offenders, f"use clara_fl.runtime.private_api instead: {offenders}"


def test_fedjob_export_still_reads_the_hook_that_keeps_every_given_argument() -> None:
    import inspect

    from nvflare.job_config.fed_job_config import FedJobConfig

    assert "_always_serialize_args" in inspect.getsource(FedJobConfig._get_args), (
        "FLARE's FedJobConfig._get_args no longer reads _always_serialize_args: recipe-built jobs may lose "
        "arguments equal to their defaults (clara_fl.runtime.private_api.export_every_given_arg)"
    )
