"""The kernel wall: a job's process confined by Linux Landlock (clara_fl.runtime.landlock, .confinement).

Each kernel test starts a real child Python that confines itself with ``job_confinement`` as its first
statement, in a fake site workspace (its working directory, with a startup kit and another job), and
then tries one thing. What a test expects refused must fail with the kernel's permission error; what
it expects allowed must work.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clara_fl.runtime import confinement as cf
from clara_fl.runtime import landlock as ll
from clara_fl.runtime.confinement import (
    Confinement,
    ConfinementError,
    ConfinementUnavailable,
    _elf_interpreter,
    apply_confinement,
    confined_environment,
    confinement_status,
    job_confinement,
    make_temp_dir,
    spawn_args,
)

ABI = ll.landlock_abi()
needs_landlock = pytest.mark.skipif(ABI == 0, reason="no Landlock in this kernel")
needs_abi_4 = pytest.mark.skipif(ABI < 4, reason="TCP rules need Landlock ABI 4 (Linux 6.7)")
needs_abi_6 = pytest.mark.skipif(ABI < 6, reason="IPC scopes need Landlock ABI 6 (Linux 6.12)")

# The child's first statements: confine, then run the test's body. A refused action prints REFUSED.
PRELUDE = """
import sys
import tempfile
from clara_fl.runtime.confinement import confine_child_from_argv
report, _ = confine_child_from_argv()
import errno, os, socket, subprocess
def refused(action):
    try:
        action()
    except PermissionError:
        print("REFUSED")
    except OSError as e:
        print("REFUSED" if e.errno in (errno.EACCES, errno.EPERM) else f"FAILED {e!r}")
    else:
        print("ALLOWED")
"""


@dataclass
class Site:
    """A fake site: its workspace (the child's working directory), a job in it, a data root, a temp folder."""

    workspace: Path
    job: Path
    other_job: Path
    data: Path
    temp: Path

    def run(self, body: str, *, ddp: bool = False, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        """Run ``body`` in a child that confined itself to this site's job (mode ``required``)."""
        conf = job_confinement(str(self.job), [str(self.data)], str(self.temp), ddp=ddp)
        return subprocess.run(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(body), *spawn_args(conf, "required")],
            cwd=self.workspace,
            env={**confined_environment(str(self.temp)), **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    workspace = tmp_path / "site-1"
    (workspace / "startup").mkdir(parents=True)
    (workspace / "startup" / "client.key").write_text("PRIVATE KEY")
    job = workspace / "job-a" / "app_site-1"
    other_job = workspace / "job-b" / "app_site-1"
    for folder in (job, other_job):
        folder.mkdir(parents=True)
    (other_job / "model.pt").write_text("another job's model")
    data = tmp_path / "data"
    data.mkdir()
    (data / "case_000.nii.gz").write_text("image")
    temp = Path(make_temp_dir("clara-fl-test-"))  # tmp_path can be too long for a socket path inside it
    yield Site(workspace, job, other_job, data, temp)
    shutil.rmtree(temp, ignore_errors=True)


def outcome(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP socket listening on 127.0.0.1 in this (unconfined) process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s


# -- the binding and the policy, without the kernel -------------------------------------------------------


def test_landlock_abi_is_zero_where_the_platform_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ll.platform, "machine", lambda: "mips64")

    assert ll.landlock_abi() == 0


def test_rights_an_older_abi_does_not_know_are_masked_out() -> None:
    assert ll.fs_rights(1) & (ll.ACCESS_FS_REFER | ll.ACCESS_FS_TRUNCATE | ll.ACCESS_FS_IOCTL_DEV) == 0
    assert ll.fs_rights(3) & ll.ACCESS_FS_TRUNCATE and not ll.fs_rights(3) & ll.ACCESS_FS_IOCTL_DEV
    assert ll.net_rights(3) == 0 and ll.net_rights(4) == ll.ACCESS_NET_BIND_TCP | ll.ACCESS_NET_CONNECT_TCP
    assert ll.scopes(5) == 0 and ll.scopes(6) == ll.SCOPE_ABSTRACT_UNIX_SOCKET | ll.SCOPE_SIGNAL
    assert ll.fs_rights(0) == 0


def test_a_confinement_survives_its_json_round_trip(site: Site) -> None:
    conf = job_confinement(str(site.job), [str(site.data)], str(site.temp), ddp=True, rendezvous_port=29500)

    assert Confinement.from_json(conf.to_json()) == conf


@pytest.mark.parametrize(
    "text",
    ['{"read_only": ["relative/path"]}', '{"shell": ["/bin/sh"]}', '{"tcp_bind": [70000]}', "[]", "not json"],
)
def test_a_malformed_confinement_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(ConfinementError):
        Confinement.from_json(text)


def test_a_job_may_read_neither_the_workspace_nor_tmp_home_root_or_etc(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(site.workspace)
    monkeypatch.syspath_prepend(str(site.workspace))  # a cwd entry on sys.path must not open the workspace

    conf = job_confinement(str(site.job), [str(site.data)], str(site.temp))

    granted = [os.path.realpath(p) for p in (*conf.read_only, *conf.read_write, *conf.devices)]
    workspace = os.path.realpath(site.workspace)
    for path in granted:
        assert not workspace.startswith(path.rstrip("/") + "/") and path != workspace, path
        assert path.startswith((os.path.realpath(site.job), workspace)) is (path == os.path.realpath(site.job))
    assert not {"/", "/tmp", "/root", "/home", "/etc"} & set(granted)
    interpreter = [sys.executable, os.path.realpath(sys.executable)]
    loader = _elf_interpreter(interpreter[1])
    assert set(conf.executables) == {*interpreter, *([loader, os.path.realpath(loader)] if loader else [])}
    assert conf.tcp_bind == conf.tcp_connect == conf.tcp_connect_ranges == ()


def test_ddp_grants_kernel_chosen_ports_and_the_ephemeral_range_for_connect(site: Site) -> None:
    conf = job_confinement(str(site.job), [str(site.data)], str(site.temp), ddp=True)

    assert conf.tcp_bind == (0,)
    assert conf.tcp_connect_ranges == (cf.ephemeral_port_range(),)
    assert conf.tcp_connect == ()


def test_required_mode_refuses_a_kernel_without_landlock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ll, "landlock_abi", lambda: 0)

    with pytest.raises(ConfinementUnavailable, match="requires job confinement and the kernel has no Landlock"):
        apply_confinement(Confinement(), "required")


def test_preferred_mode_without_landlock_runs_unconfined_after_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ll, "landlock_abi", lambda: 0)
    monkeypatch.setattr(cf, "_warned", set())

    reports = [apply_confinement(Confinement(), "preferred") for _ in range(2)]

    assert not reports[0].confined and "NOT confined (no Landlock" in reports[0].describe()
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "WARNING: no Landlock in this kernel: job code runs UNCONFINED" in caplog.records[0].message


def test_off_mode_runs_unconfined_after_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cf, "_warned", set())

    report = apply_confinement(Confinement(), "off")

    assert report.describe() == "NOT confined (confinement is off; confinement mode 'off')"
    assert "job confinement is OFF" in caplog.text


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="must be one of required, preferred, off"):
        apply_confinement(Confinement(), "sometimes")


def test_the_status_line_names_the_abi_and_what_is_confined(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ll, "landlock_abi", lambda: 7)
    assert confinement_status() == "Landlock ABI 7: jobs run confined (files, exec, TCP, unix-socket and signal scopes)"
    monkeypatch.setattr(ll, "landlock_abi", lambda: 0)
    assert confinement_status().startswith("no Landlock in this kernel: jobs run unconfined")
    assert "jobs are refused" in confinement_status("required")


def test_a_child_started_without_its_confinement_refuses_to_run() -> None:
    with pytest.raises(ConfinementError, match="--confinement is missing"):
        cf.confine_child_from_argv(["--other", "x"])


# -- the kernel: what a confined job is refused -------------------------------------------------------------


@needs_landlock
def test_a_confined_job_cannot_write_in_the_site_workspace(site: Site) -> None:
    target = site.workspace / "planted.py"

    done = site.run(f"refused(lambda: open({str(target)!r}, 'w'))")

    assert outcome(done) == "REFUSED" and not target.exists()


@needs_landlock
def test_a_confined_job_cannot_write_in_tmp(site: Site) -> None:
    target = Path("/tmp") / f"clara-fl-landlock-{uuid.uuid4().hex}"

    done = site.run(f"refused(lambda: open({str(target)!r}, 'w'))")

    assert outcome(done) == "REFUSED" and not target.exists()


@needs_landlock
def test_a_confined_job_cannot_read_the_sites_startup_kit(site: Site) -> None:
    done = site.run(f"refused(lambda: open({str(site.workspace / 'startup' / 'client.key')!r}).read())")

    assert outcome(done) == "REFUSED"


@needs_landlock
def test_a_confined_job_cannot_read_another_jobs_folder(site: Site) -> None:
    done = site.run(f"refused(lambda: open({str(site.other_job / 'model.pt')!r}).read())")

    assert outcome(done) == "REFUSED"


@needs_landlock
def test_a_confined_job_cannot_list_the_site_workspace(site: Site) -> None:
    done = site.run(f"refused(lambda: os.listdir({str(site.workspace)!r}))")

    assert outcome(done) == "REFUSED"


@needs_landlock
def test_a_confined_job_cannot_run_a_shell_with_os_system(site: Site) -> None:
    marker = site.temp / "owned"  # a folder the job may write: only the exec can stop it

    done = site.run(f"print('STATUS', os.system('touch {marker}'))")

    assert done.returncode == 0 and "STATUS 0" not in done.stdout and not marker.exists()


@needs_landlock
def test_a_confined_job_cannot_exec_bin_sh(site: Site) -> None:
    done = site.run("refused(lambda: subprocess.run(['/bin/sh', '-c', 'true']))")

    assert outcome(done) == "REFUSED"


@needs_landlock
def test_a_confined_job_cannot_run_a_shell_through_the_dynamic_loader(site: Site) -> None:
    loader = _elf_interpreter(os.path.realpath(sys.executable))
    if loader is None:
        pytest.skip("a statically linked Python")
    marker = site.temp / "owned"

    done = site.run(f"print(subprocess.run([{loader!r}, '/bin/sh', '-c', 'touch {marker}']).returncode)")

    assert outcome(done) != "0" and not marker.exists()


@needs_landlock
def test_a_confined_job_cannot_read_another_processs_environment(site: Site) -> None:
    done = site.run(f"refused(lambda: open('/proc/{os.getpid()}/environ').read())")

    assert outcome(done) == "REFUSED"


@needs_landlock
def test_a_confined_root_process_holds_no_capabilities(site: Site) -> None:
    done = site.run("print([l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0])")

    assert int(outcome(done), 16) == 0


@needs_abi_4
def test_a_confined_job_cannot_connect_over_tcp(site: Site, listener: socket.socket) -> None:
    port = listener.getsockname()[1]

    done = site.run(f"refused(lambda: socket.create_connection(('127.0.0.1', {port}), timeout=5))")

    assert outcome(done) == "REFUSED"


@needs_abi_4
def test_a_confined_job_cannot_listen_on_tcp(site: Site) -> None:
    done = site.run("refused(lambda: socket.socket().bind(('127.0.0.1', 0)))")

    assert outcome(done) == "REFUSED"


@needs_abi_6
def test_a_confined_job_cannot_reach_an_abstract_unix_socket_outside_it(site: Site) -> None:
    name = f"\0clara-fl-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(name)
        server.listen()

        done = site.run(f"refused(lambda: socket.socket(socket.AF_UNIX).connect({name!r}))")

    assert outcome(done) == "REFUSED"


@needs_abi_6
def test_a_confined_job_cannot_signal_a_process_outside_it(site: Site) -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        done = site.run(f"import signal; refused(lambda: os.kill({victim.pid}, signal.SIGTERM))")

        assert outcome(done) == "REFUSED" and victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


@needs_landlock
def test_a_process_that_already_runs_threads_is_not_confined(site: Site) -> None:
    conf = job_confinement(str(site.job), [str(site.data)], str(site.temp))
    code = textwrap.dedent(
        """
        import sys, threading, time
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        from clara_fl.runtime.confinement import ConfinementError, confine_child_from_argv
        try:
            confine_child_from_argv()
        except ConfinementError as e:
            print(e)
        """
    )

    done = subprocess.run([sys.executable, "-c", code, *spawn_args(conf, "required")], capture_output=True, text=True)

    assert "threads already run in this process and would stay unconfined" in done.stdout


# -- the kernel: what a confined job may still do ---------------------------------------------------------------


@needs_landlock
def test_a_confined_job_writes_reads_and_removes_in_its_own_folder(site: Site) -> None:
    done = site.run(
        f"""
        path = os.path.join({str(site.job)!r}, "models", "model.pt")
        os.makedirs(os.path.dirname(path))
        open(path + ".tmp", "w").write("weights")
        os.replace(path + ".tmp", path)
        print(open(path).read())
        """
    )

    assert outcome(done) == "weights" and (site.job / "models" / "model.pt").read_text() == "weights"


@needs_landlock
def test_a_confined_job_writes_in_its_temp_folder_through_tempfile(site: Site) -> None:
    done = site.run("import tempfile; f = tempfile.NamedTemporaryFile(); f.write(b'x'); print(os.path.dirname(f.name))")

    assert outcome(done) == str(site.temp)


@needs_landlock
def test_a_confined_job_reads_its_data_root(site: Site) -> None:
    done = site.run(f"print(os.listdir({str(site.data)!r}), open({str(site.data / 'case_000.nii.gz')!r}).read())")

    assert outcome(done) == "['case_000.nii.gz'] image"


@needs_landlock
def test_a_confined_job_imports_torch_and_runs_a_forward_pass(site: Site) -> None:
    done = site.run(
        """
        import torch
        torch.manual_seed(0)
        print(tuple(torch.nn.Conv3d(1, 2, 3, padding=1)(torch.ones(1, 1, 4, 4, 4)).shape))
        """
    )

    assert outcome(done) == "(1, 2, 4, 4, 4)"


@needs_landlock
def test_a_confined_jobs_data_loader_workers_hand_tensors_over_in_shared_memory(site: Site) -> None:
    done = site.run(
        """
        import torch
        loader = torch.utils.data.DataLoader(torch.arange(8.0).reshape(8, 1), batch_size=4, num_workers=2)
        print(sum(batch.sum().item() for batch in loader))
        """
    )

    assert outcome(done) == "28.0"


@needs_landlock
def test_a_confined_job_may_start_the_python_interpreter(site: Site) -> None:
    done = site.run(
        "print(subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True).stdout)"
    )

    assert outcome(done) == "42"


@needs_landlock
def test_the_confined_process_reports_what_the_kernel_enforces(site: Site) -> None:
    done = site.run("print(report.describe())")

    assert outcome(done).startswith(f"confined by Landlock ABI {ABI}: files, exec")


# -- DDP between the job's own processes ---------------------------------------------------------------------

DDP_WORKER = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
if dist.get_rank() == 0:
    open(os.path.join(os.environ["OUT"], "sum.txt"), "w").write(str(value.item()))
dist.destroy_process_group()
"""


def torchrun_confined(site: Site, *, ddp: bool) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2`` started by the confining launcher (it stays confined)."""
    worker = site.job / "worker.py"
    worker.write_text(DDP_WORKER)
    conf = job_confinement(str(site.job), [str(site.data)], str(site.temp), ddp=ddp)
    command = [
        sys.executable,
        "-m",
        "clara_fl.runtime.confinement",
        *spawn_args(conf, "required"),
        "--",
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(worker),
    ]
    env = {**confined_environment(str(site.temp)), "OUT": str(site.job), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=site.workspace, env=env, capture_output=True, text=True, timeout=120)


@needs_abi_4
def test_a_confined_two_process_gloo_all_reduce_works_with_ddp(site: Site) -> None:
    done = torchrun_confined(site, ddp=True)

    assert done.returncode == 0, done.stderr[-3000:]
    assert (site.job / "sum.txt").read_text() == "3.0"


@needs_abi_4
def test_without_ddp_the_same_worker_cannot_open_its_rendezvous_socket(site: Site) -> None:
    # Started directly as rank 0 of 2: under torchrun the agent's own store fails the same way, but the agent
    # retries for about 90 s before it gives up.
    worker = site.job / "worker.py"
    worker.write_text(DDP_WORKER)
    conf = job_confinement(str(site.job), [str(site.data)], str(site.temp), ddp=False)
    command = [sys.executable, "-m", "clara_fl.runtime.confinement", *spawn_args(conf, "required"), "--"]
    rank_0_of_2 = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "WORLD_SIZE": "2"}
    env = {**confined_environment(str(site.temp)), **rank_0_of_2, "OUT": str(site.job)}

    done = subprocess.run([*command, sys.executable, str(worker)], env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode != 0 and not (site.job / "sum.txt").exists()
    assert "failed to bind" in done.stderr and "EACCES" in done.stderr


def test_job_confinement_json_fits_on_a_command_line(site: Site) -> None:
    conf = job_confinement(str(site.job), [str(site.data)], str(site.temp), ddp=True)

    assert len(json.dumps(spawn_args(conf, "preferred"))) < 32_000


def test_a_temporary_folder_too_long_for_multiprocessing_sockets_is_refused_for_a_confined_process(
    tmp_path: Path,
) -> None:
    long_folder = tmp_path / ("x" * 80)

    with pytest.raises(ValueError, match="at most 75 characters"):
        confined_environment(str(long_folder))


def test_a_confined_processs_temporary_folder_leaves_room_for_multiprocessing_sockets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    long_tmpdir = tmp_path / ("x" * 80)
    long_tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmpdir))

    made = make_temp_dir("clara-fl-test-")

    try:
        assert len(made) <= 75 and not made.startswith(str(long_tmpdir))
        assert confined_environment(made)["TMPDIR"] == made
    finally:
        os.rmdir(made)
