"""Start-up: a process that builds one workflow pauses the garbage collector while building."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from clara_fl.cli import main
from clara_fl.runtime.startup import build_once, release_frozen
from tests.conftest import tiny_set


@pytest.fixture
def collector() -> Iterator[None]:
    was_enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


def test_build_once_pauses_the_collector_and_freezes_what_was_built(collector: None) -> None:
    gc.enable()
    with build_once():
        assert not gc.isenabled()
        built = [{"layer": i} for i in range(1000)]

    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(built)
    release_frozen()
    assert gc.get_freeze_count() == 0


def test_build_once_leaves_a_disabled_collector_disabled(collector: None) -> None:
    gc.disable()
    with build_once():
        pass
    assert not gc.isenabled()


def test_build_once_restores_the_collector_when_the_build_fails(collector: None) -> None:
    gc.enable()
    with pytest.raises(ValueError), build_once():
        raise ValueError("bad config")
    assert gc.isenabled()


def test_a_command_run_in_process_leaves_nothing_frozen(spleen_mmar: Path, collector: None) -> None:
    gc.enable()
    assert main(["train", "-m", str(spleen_mmar), "--set", *tiny_set(epochs=1)]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == 0
