"""The site's confined process: a job's config code runs there, not in FLARE's process, for the whole job.

These tests use the real child process (marker ``site_process``); the site set-up is test_fl_learner.py's.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from nvflare.apis.dxo import DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import ReservedHeaderKey
from nvflare.apis.signal import Signal

from clara_fl.fl.site.exchange import read_payload, write_payload
from clara_fl.fl.site.learner import ClaraLearner
from clara_fl.fl.site.site_process import SiteProcess, SiteProcessSpec
from clara_fl.runtime.landlock import landlock_abi
from tests.test_fl_learner import OVERRIDES, Site, site, train_task  # noqa: F401  (site is a fixture)

pytestmark = pytest.mark.site_process

needs_landlock = pytest.mark.skipif(landlock_abi() < 4, reason="this kernel has no Landlock ABI 4 (Linux 6.7+)")


class Recorder:
    """An analytics writer that records what the Learner streams."""

    sender = True

    def __init__(self) -> None:
        self.points: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, scalar: float, global_step: int) -> None:
        self.points.append((tag, scalar, global_step))


def add_section_item(app: Path, name: str, value: object) -> None:
    path = app / "config" / "config_train.json"
    config = json.loads(path.read_text())
    config["train"][name] = value
    path.write_text(json.dumps(config))


def set_site_file(site: Site, **values: object) -> None:
    path = site.root / "local" / "clara_fl_site.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def test_a_round_trains_in_the_confined_process_and_streams_its_curves(site: Site) -> None:
    writer = Recorder()
    learner = ClaraLearner(overrides=dict(OVERRIDES))
    learner.initialize({"analytic_sender": writer}, site.ctx)
    try:
        assert learner.init_failure is None
        reply = learner.train(train_task(site.global_weights()), site.ctx, Signal())

        assert reply.get_return_code() == ReturnCode.OK
        dxo = from_shareable(reply)
        assert dxo.data_kind == DataKind.WEIGHT_DIFF
        assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == site.epoch_length()
        assert {tag for tag, _, _ in writer.points} >= {"train_loss"}
        assert (site.app / "models" / "fl_local_state.pt").is_file()
        child = learner.backend
        assert isinstance(child, SiteProcess) and child.alive and child._process.pid != os.getpid()  # type: ignore[union-attr]
    finally:
        learner.finalize(site.ctx)


def test_the_learner_of_the_next_task_finds_the_trainer_already_built(site: Site) -> None:
    first = ClaraLearner(overrides=dict(OVERRIDES))
    first.initialize({}, site.ctx)
    try:
        second = ClaraLearner(overrides=dict(OVERRIDES))
        second.initialize({}, site.ctx)

        assert second.backend is first.backend
        assert second.train(train_task(site.global_weights()), site.ctx, Signal()).get_return_code() == ReturnCode.OK
    finally:
        first.finalize(site.ctx)


def test_an_abort_stops_the_round_in_the_confined_process(site: Site) -> None:
    import threading

    learner = ClaraLearner(overrides=dict(OVERRIDES), local_epochs=200)
    learner.initialize({}, site.ctx)
    abort = Signal()
    try:
        threading.Timer(3.0, abort.trigger, args=("server asked to abort",)).start()
        started = time.monotonic()
        reply = learner.train(train_task(site.global_weights()), site.ctx, abort)

        assert reply.get_return_code() == ReturnCode.TASK_ABORTED
        assert time.monotonic() - started < 60
        assert learner.backend is not None and learner.backend.alive  # type: ignore[attr-defined]
    finally:
        learner.finalize(site.ctx)


def test_a_failure_reaches_the_server_as_its_kind_and_config_item_only(site: Site) -> None:
    secret = site.root.parent / "MRN-4471923-archive"
    learner = ClaraLearner(overrides={**OVERRIDES, "DATASET_JSON": str(secret / "MRN-4471923.json")})
    learner.initialize({}, site.ctx)
    try:
        reply = learner.train(train_task(site.global_weights()), site.ctx, Signal())

        assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
        sent = reply.get_header(ReservedHeaderKey.ERROR)
        assert sent.startswith("cannot build this site's trainer: ConfigError")
        assert "MRN-4471923" not in sent and str(site.root) not in sent
        assert learner.init_failure is not None and "MRN-4471923" in learner.init_failure.local_text()
    finally:
        learner.finalize(site.ctx)


@needs_landlock
def test_with_full_python_a_jobs_command_cannot_start_a_shell_or_write_outside_the_job(site: Site) -> None:
    set_site_file(site, code_policy="full")
    shell_marker = site.root / "shell_ran"
    write_marker = site.root / "written_outside"
    add_section_item(site.app, "pwn_shell", f"#__import__('os').system('touch {shell_marker}')")
    add_section_item(site.app, "pwn_write", f"#__import__('pathlib').Path('{write_marker}').touch()")
    learner = ClaraLearner(overrides=dict(OVERRIDES))
    learner.initialize({}, site.ctx)
    try:
        assert not shell_marker.exists(), "the job started a shell"
        assert not write_marker.exists(), "the job wrote outside its folder"
        assert learner.init_failure is not None and "PermissionError" in learner.init_failure.local_text()
    finally:
        learner.finalize(site.ctx)


@needs_landlock
@pytest.mark.parametrize("secret", ["startup/client.key", "other_job/app_site-1/config/environment.json"])
def test_with_full_python_a_job_cannot_read_the_startup_kit_or_another_job(site: Site, secret: str) -> None:
    set_site_file(site, code_policy="full")
    planted = site.root / secret
    planted.parent.mkdir(parents=True)
    planted.write_text("PRIVATE")
    stolen = site.app / "stolen.txt"
    add_section_item(
        site.app, "pwn_read", f"#__import__('pathlib').Path('{stolen}').write_text(open('{planted}').read())"
    )
    learner = ClaraLearner(overrides=dict(OVERRIDES))
    learner.initialize({}, site.ctx)
    try:
        assert not stolen.exists()
        assert learner.init_failure is not None and "PermissionError" in learner.init_failure.local_text()
    finally:
        learner.finalize(site.ctx)


def kill_the_flare_process(site: Site, tmp_path: Path, channel_ends_first: bool = False) -> tuple[int, Path]:
    """Start the site's confined process from a stand-in FLARE process, leave a task's payload in its temporary
    folder, then SIGKILL the FLARE process; returns the confined process's pid and its temporary folder.

    With ``channel_ends_first`` the FLARE process closes its end of the channel before it is killed, as the kernel
    may show the confined process when the two ends close at once."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys, time
            from clara_fl.fl.site.site_process import SiteProcess, SiteProcessSpec
            process = SiteProcess(SiteProcessSpec({str(site.app)!r}))
            process.start()
            os.makedirs(os.path.join(process._temp_dir, "exchange"), exist_ok=True)
            with open(os.path.join(process._temp_dir, "exchange", "request-1.pt"), "wb") as f:
                f.write(bytes(1 << 20))
            if {channel_ends_first!r}:
                process._channel.close()
                time.sleep(1)
            print(process._process.pid, process._temp_dir, flush=True)
            time.sleep(600)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child_pid, temp_dir = parent.stdout.readline().split()  # type: ignore[union-attr]

    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    return int(child_pid), Path(temp_dir)


def wait_for_the_end(pid: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.2)


def test_the_confined_process_ends_when_the_flare_process_is_killed(site: Site, tmp_path: Path) -> None:
    child_pid, _ = kill_the_flare_process(site, tmp_path)

    wait_for_the_end(child_pid)

    assert not _running(child_pid), "the confined process outlived the FLARE process"


@pytest.mark.parametrize("channel_ends_first", [False, True], ids=["lifeline-seen-first", "channel-seen-first"])
def test_the_confined_process_empties_its_temporary_folder_when_the_flare_process_is_killed(
    site: Site, tmp_path: Path, channel_ends_first: bool
) -> None:
    child_pid, temp_dir = kill_the_flare_process(site, tmp_path, channel_ends_first)

    wait_for_the_end(child_pid)

    assert not temp_dir.exists() or not any(temp_dir.iterdir()), sorted(p.name for p in temp_dir.rglob("*"))


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_payload_round_trips_numpy_arrays_tensors_and_plain_values(tmp_path: Path) -> None:
    import numpy as np

    payload = {
        "weights": {
            "a": np.arange(6, dtype=np.float32).reshape(2, 3),
            "steps": np.int64(4) - np.int64(1),
            "tracked": np.array(7),
        },
        "meta": {"n": 3, "c": [1.5, "x"]},
    }
    path = str(tmp_path / "p.pt")

    write_payload(path, payload)
    back = read_payload(path)

    np.testing.assert_array_equal(back["weights"]["a"], payload["weights"]["a"])
    assert isinstance(back["weights"]["a"], np.ndarray)
    assert back["weights"]["tracked"].shape == ()  # a 0-d buffer (num_batches_tracked) keeps its shape
    assert (
        back["weights"]["steps"].shape == () and int(back["weights"]["steps"]) == 3
    )  # a 0-d array, as FLARE's filters want
    assert back["meta"] == {"n": 3, "c": [1.5, "x"]}


class _Payload:
    def __reduce__(self) -> tuple:
        return (os.system, ("true",))


def test_a_forged_payload_that_would_unpickle_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "forged.pt"
    torch.save({"payload": _Payload()}, path)

    with pytest.raises(pickle.UnpicklingError):
        read_payload(str(path))


def test_a_site_that_requires_confinement_refuses_jobs_where_the_kernel_has_none(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clara_fl.fl.site.local_training import SiteTaskFailed
    from clara_fl.runtime import landlock

    monkeypatch.setattr(landlock, "landlock_abi", lambda: 0)
    process = SiteProcess(SiteProcessSpec(str(site.app), confinement="required"))

    with pytest.raises(SiteTaskFailed, match="requires confinement"):
        process.start()
    assert not process.alive


@needs_landlock
def test_with_full_python_a_job_cannot_open_a_socket(site: Site) -> None:
    import socket

    set_site_file(site, code_policy="full")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    add_section_item(site.app, "pwn_connect", f"#__import__('socket').create_connection(('127.0.0.1', {port}))")
    learner = ClaraLearner(overrides=dict(OVERRIDES))
    try:
        learner.initialize({}, site.ctx)
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing connected
        assert learner.init_failure is not None and "PermissionError" in learner.init_failure.local_text()
    finally:
        listener.close()
        learner.finalize(site.ctx)
