"""An aborted job leaves no trainer behind: the site's job process ends soon after END_RUN of an aborted run,
and torchrun and its workers die with the process that started them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux")

JOB_PROCESS = """
import time
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from clara_fl.fl.flare_internals.abort import ExitPromptlyOnAbort

component, ctx = ExitPromptlyOnAbort(grace_s=0.1), FLContext()
ctx.set_prop(FLContextKey.RUN_ABORT_REQUESTED, {aborted}, private=True, sticky=False)
component.handle_event(EventType.START_RUN, ctx)
component.handle_event(EventType.ABORT_TASK, ctx)
component.handle_event(EventType.END_RUN, ctx)
time.sleep(5)
print("still running after END_RUN")
"""


def run_job_process(aborted: bool) -> subprocess.CompletedProcess:
    code = JOB_PROCESS.format(aborted=aborted)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_the_job_process_of_an_aborted_run_exits_after_end_run() -> None:
    ended = run_job_process(aborted=True)

    assert ended.returncode == 0, ended.stderr
    assert "still running" not in ended.stdout


def test_a_run_that_ends_normally_is_left_to_flare() -> None:
    ended = run_job_process(aborted=False)

    assert ended.returncode == 0, ended.stderr
    assert "still running after END_RUN" in ended.stdout


@linux_only
def test_a_process_that_calls_die_with_parent_is_killed_with_its_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"  # written by the child once the kernel is to end it with its parent
    child_code = (
        "import os, time; from clara_fl.fl.site.worker import die_with_parent; die_with_parent(); "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    parent_code = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child_code!r}]); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert Path(f"/proc/{child}").exists()

        parent.kill()
        parent.wait(timeout=30)

        deadline = time.monotonic() + 30
        while Path(f"/proc/{child}").exists() and _state(child) != "Z" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{child}").exists() or _state(child) == "Z", "the child outlived its parent"
    finally:
        parent.kill()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_the_round_launcher_refuses_to_start_when_its_parent_is_already_gone() -> None:
    not_the_parent = 1

    launched = subprocess.run(
        [sys.executable, "-m", "clara_fl.fl.site.torchrun", "--parent-pid", str(not_the_parent), "--standalone"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert launched.returncode != 0
    assert "the process that started this round is gone" in launched.stderr
