"""What a site's FLARE process keeps per task of a job stays bounded: the weights it hands its confined process leave
the exchange folder once answered, and the memory FLARE's last messages held is given back to the system before the
next task (glibc's ``malloc_trim``), so neither grows with the rounds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clara_fl.fl.site.site_process import SiteProcess, SiteProcessSpec


class ConfinedProcessStandIn:
    """The confined process's end of the channel: it answers every request at once, noting which request files
    existed when it got the request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.payload_there: list[bool] = []

    def send_bytes(self, data: bytes) -> None:
        request = json.loads(data)
        self.requests.append(request)
        self.payload_there.append(bool(request.get("payload")) and os.path.isfile(request["payload"]))

    def poll(self, timeout: float) -> bool:
        return True

    def recv_bytes(self) -> bytes:
        return json.dumps({"id": self.requests[-1]["id"], "ok": True, "result": {"steps": 1}}).encode()

    def close(self) -> None:
        pass


class Running:
    def poll(self) -> None:
        return None


def site_process(tmp_path: Path) -> tuple[SiteProcess, ConfinedProcessStandIn]:
    process = SiteProcess(SiteProcessSpec(str(tmp_path / "app")))
    channel = ConfinedProcessStandIn()
    process._process, process._channel, process._temp_dir = Running(), channel, str(tmp_path / "tmp")  # type: ignore[assignment]
    return process, channel


def test_a_tasks_weights_leave_the_exchange_folder_once_the_confined_process_answered(tmp_path: Path) -> None:
    process, channel = site_process(tmp_path)
    weights = {"data": {"w": np.ones((64, 64), dtype=np.float32)}, "meta": {}}

    results = [process.call("train", {"data_kind": "WEIGHTS"}, weights)[0] for _ in range(5)]

    assert results == [{"steps": 1}] * 5
    assert channel.payload_there == [True] * 5
    assert os.listdir(tmp_path / "tmp" / "exchange") == []


def test_freed_memory_goes_back_to_the_system_before_every_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nvflare.fuel.utils.memory_utils as memory_utils

    trims: list[str] = []

    def counted_trim() -> int:
        trims.append("trim")
        return 1

    monkeypatch.setattr(memory_utils, "try_malloc_trim", counted_trim)
    process, channel = site_process(tmp_path)

    for _ in range(3):
        process.call("validate", {"data_kind": "WEIGHTS", "validate_type": "model_validate"}, {"data": {}})
        process.call("submit_model", {"model_name": None})

    assert len(trims) == len(channel.requests) == 6
