"""What a job's code may touch at a site, enforced by the kernel (Linux Landlock) on a process.

A job's config is code-like: it names classes and their arguments, and BYOC jobs bring Python. The
config policy (:mod:`clara_fl.config.restrictions`) is the first wall; this module is the second: a
process that runs job code confines itself before it starts, and from then on the kernel refuses
whatever the :class:`Confinement` does not grant, whatever Python the job manages to run.

* :class:`Confinement` says what is granted: folders to read, folders to write, programs to execute
  (the Python interpreter only), device files, TCP ports. It travels from parent to child as JSON.
* :func:`job_confinement` is what a job's process at a site gets; :func:`process_confinement` the
  same runtime grants (Python installation, system files) around other folders.
* :func:`apply_confinement` enforces one on the calling process under a site's
  :data:`ConfinementMode`; :func:`confine_child_from_argv` does it first thing in a child entry
  point that a parent started with :func:`spawn_args`.
* ``python -m clara_fl.runtime.confinement --confinement JSON --confinement-mode MODE -- PROGRAM ARGS``
  confines itself and then ``exec``\\ s the program (torchrun, for a DDP job), which stays confined.

Landlock confines a thread and what it starts afterwards: confine a fresh process before it starts
threads (before importing torch). :func:`apply_confinement` refuses to confine a process that
already runs several threads, since those would stay free.

What stays open even when confined (Landlock up to ABI 7): UDP and other non-TCP sockets, connecting
to a named unix socket whose path is known, ``stat`` of any path, reading ``/proc`` entries that
are not protected by ptrace checks (e.g. other processes' command lines), and with ``ddp=True`` the
TCP ports listed in :func:`job_confinement`. A process that runs as root keeps no capabilities once
confined (they are dropped), but a site should still run its clients as an unprivileged user.
"""

from __future__ import annotations

import ctypes
import dataclasses
import glob
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from clara_fl.runtime import landlock as ll

__all__ = [
    "CONFINEMENT_MODES",
    "REQUIRED_ABI",
    "Confinement",
    "ConfinementError",
    "ConfinementMode",
    "ConfinementReport",
    "ConfinementUnavailable",
    "apply_confinement",
    "check_confinement_mode",
    "confine_child_from_argv",
    "confined_environment",
    "confinement_status",
    "make_temp_dir",
    "ephemeral_port_range",
    "job_confinement",
    "process_confinement",
    "python_installation_paths",
    "spawn_args",
]

ConfinementMode = Literal["required", "preferred", "off"]
CONFINEMENT_MODES: tuple[str, ...] = ("required", "preferred", "off")
CONFINEMENT_ARG, MODE_ARG = "--confinement", "--confinement-mode"
# "required" refuses a kernel that cannot confine files, execution AND TCP (Landlock ABI 4, Linux 6.7).
REQUIRED_ABI = 4

_READ = ll.ACCESS_FS_READ_FILE | ll.ACCESS_FS_READ_DIR
_WRITE = (
    _READ
    | ll.ACCESS_FS_WRITE_FILE
    | ll.ACCESS_FS_REMOVE_DIR
    | ll.ACCESS_FS_REMOVE_FILE
    | ll.ACCESS_FS_MAKE_DIR
    | ll.ACCESS_FS_MAKE_REG
    | ll.ACCESS_FS_MAKE_SOCK  # multiprocessing's listener sockets in TMPDIR (DataLoader workers)
    | ll.ACCESS_FS_MAKE_FIFO
    | ll.ACCESS_FS_MAKE_SYM
    | ll.ACCESS_FS_REFER
    | ll.ACCESS_FS_TRUNCATE
)  # never MAKE_CHAR / MAKE_BLOCK: device nodes
_EXECUTE = ll.ACCESS_FS_EXECUTE | ll.ACCESS_FS_READ_FILE
_DEVICE = _READ | ll.ACCESS_FS_WRITE_FILE | ll.ACCESS_FS_IOCTL_DEV
_ALL_NET = ll.ACCESS_NET_BIND_TCP | ll.ACCESS_NET_CONNECT_TCP
_ALL_SCOPES = ll.SCOPE_ABSTRACT_UNIX_SOCKET | ll.SCOPE_SIGNAL

# Read-only system files a Python / PyTorch / MONAI process reads. Each is named on purpose: never
# all of /etc, /root, /home, /tmp or a site workspace.
SYSTEM_READ_ONLY: tuple[str, ...] = (
    # Shared libraries (libc, libstdc++, libgomp, the dynamic loader); /lib* are links into /usr on
    # merged-/usr systems. Not /usr/bin or /usr/sbin: the dynamic loader is executable (see
    # _interpreters) and would run any program it can read.
    "/usr/lib",
    "/usr/lib64",
    "/usr/lib32",
    "/usr/libx32",
    "/usr/local/lib",
    "/lib",
    "/lib64",
    "/lib32",
    "/libx32",
    "/usr/share/zoneinfo",  # time zones (logging, datetime)
    "/etc/ld.so.cache",  # the dynamic loader's library index
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",  # time zone of log time stamps
    "/etc/timezone",
    "/etc/passwd",  # getpass.getuser() / pwd lookups (torch's cache folders); no secrets (those are in shadow)
    "/etc/group",
    "/etc/nsswitch.conf",  # how the two above and host names are looked up
    "/etc/hosts",  # "localhost" for gloo and the c10d store
    "/etc/host.conf",
    "/etc/gai.conf",
    "/proc",  # cpuinfo, meminfo, /proc/self/*; other processes' environ, fd, mem are refused by Landlock's ptrace rule
    "/sys/devices/system/cpu",  # CPU count, caches and frequencies (torch, OpenMP)
    "/sys/devices/system/node",  # NUMA nodes (OpenMP, torch)
    "/sys/fs/cgroup",  # the CPU and memory limits of the container
    "/dev/urandom",  # seeds (numpy, Python's random when getrandom is missing)
    "/dev/random",
    "/dev/zero",
)
# Written by any process: /dev/null (subprocess DEVNULL, logging sinks), /dev/shm (DataLoader
# workers hand tensors over in POSIX shared memory, multiprocessing semaphores live there).
SYSTEM_READ_WRITE: tuple[str, ...] = ("/dev/null", "/dev/shm")
# gloo lists the PCI devices to find the network interface's speed (gloo/common/linux.cc).
DDP_READ_ONLY: tuple[str, ...] = ("/sys/bus/pci", "/sys/devices/pci*")
# CUDA: the driver's device files (read, write, ioctl) and what it reads about the GPUs.
GPU_DEVICE_GLOBS: tuple[str, ...] = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri")
GPU_READ_ONLY: tuple[str, ...] = (
    "/sys/bus/pci",
    "/sys/devices",
    "/sys/module/nvidia",
    "/etc/nvidia",
    "/usr/local/cuda",  # a system CUDA toolkit's libraries (pip's torch brings its own in site-packages)
)

_log = logging.getLogger(__name__)
_warned: set[str] = set()


class ConfinementError(RuntimeError):
    """A confinement could not be applied as asked (bad arguments, threads already running, a kernel error)."""


class ConfinementUnavailable(ConfinementError):
    """The site requires confinement and this kernel cannot provide it."""


@dataclass(frozen=True)
class Confinement:
    """What a confined process may touch; everything else on the file system, and all TCP, is refused.

    Args:
        read_only: folders (everything beneath, listing included) and files it may read.
        read_write: folders where it may also create, write, truncate, rename and remove entries
            (and files it may read and write).
        executables: files it may ``execve``: the Python interpreter only.
        devices: device files and folders of devices it may read, write and ``ioctl`` (CUDA).
        tcp_bind: TCP ports it may bind; 0 is "a port the kernel chooses" (an ephemeral port).
        tcp_connect: TCP ports it may connect to (on any host: Landlock knows ports, not addresses).
        tcp_connect_ranges: inclusive ``(first, last)`` port ranges it may connect to.
    """

    read_only: tuple[str, ...] = ()
    read_write: tuple[str, ...] = ()
    executables: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    tcp_bind: tuple[int, ...] = ()
    tcp_connect: tuple[int, ...] = ()
    tcp_connect_ranges: tuple[tuple[int, int], ...] = ()

    def to_json(self) -> str:
        """One line of JSON (:meth:`from_json` reads it back)."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Confinement:
        """The confinement :meth:`to_json` wrote.

        Raises:
            ConfinementError: not JSON, an unknown key, or a value of the wrong type.
        """
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfinementError(f"the confinement is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfinementError("the confinement must be a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfinementError(f"unknown confinement keys: {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if not isinstance(value, list):
                raise ConfinementError(f"confinement.{name} must be a list")
            if name == "tcp_connect_ranges":
                if not all(isinstance(r, list) and len(r) == 2 and all(_is_port(p) for p in r) for r in value):
                    raise ConfinementError("confinement.tcp_connect_ranges must be [first, last] port pairs")
                values[name] = tuple((int(r[0]), int(r[1])) for r in value)
            elif name.startswith("tcp_"):
                if not all(_is_port(p) for p in value):
                    raise ConfinementError(f"confinement.{name} must be TCP ports")
                values[name] = tuple(value)
            else:
                if not all(isinstance(p, str) and os.path.isabs(p) for p in value):
                    raise ConfinementError(f"confinement.{name} must be absolute paths")
                values[name] = tuple(value)
        return cls(**values)


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535


@dataclass(frozen=True)
class ConfinementReport:
    """What :func:`apply_confinement` did.

    Args:
        mode: the site's confinement mode.
        abi: the Landlock ABI used; 0 when the process was not confined.
        enforced: what the kernel now enforces, in words ("files", "exec", "TCP", ...).
        missing: granted paths that did not exist (no rule was added for them).
    """

    mode: str
    abi: int = 0
    enforced: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def confined(self) -> bool:
        return self.abi > 0

    def describe(self) -> str:
        """One line for a log."""
        if not self.confined:
            why = "confinement is off" if self.mode == "off" else "no Landlock in this kernel"
            return f"NOT confined ({why}; confinement mode '{self.mode}')"
        return f"confined by Landlock ABI {self.abi}: {', '.join(self.enforced)}"


def check_confinement_mode(mode: Any, where: str = "confinement") -> ConfinementMode:
    """``mode`` if it is one of :data:`CONFINEMENT_MODES`.

    Args:
        mode: the value a site file or a command line gave.
        where: what to name in the error (a site file's key).

    Raises:
        ValueError: any other value.
    """
    if mode not in CONFINEMENT_MODES:
        raise ValueError(f"{where} must be one of {', '.join(CONFINEMENT_MODES)}, got {mode!r}")
    return cast(ConfinementMode, mode)


def _enforced(abi: int) -> tuple[str, ...]:
    words = ["files", "exec"]
    if abi >= 2:
        words.append("cross-folder links and renames")
    if abi >= 3:
        words.append("truncation")
    if abi >= 4:
        words.append("TCP bind/connect")
    if abi >= 5:
        words.append("device ioctl")
    if abi >= 6:
        words += ["abstract unix-socket scope", "signal scope"]
    return tuple(words)


def confinement_status(mode: str = "preferred") -> str:
    """One line for ``clara-fl site setup``: how this machine's kernel confines jobs under ``mode``.

    Args:
        mode: the site's confinement mode.

    Raises:
        ValueError: an unknown mode.
    """
    check_confinement_mode(mode)
    abi = ll.landlock_abi()
    if mode == "off":
        return f"confinement is off: jobs run unconfined (Landlock ABI {abi} is available)"
    if abi == 0:
        refused = "jobs are refused (confinement 'required')" if mode == "required" else "jobs run unconfined"
        return f"no Landlock in this kernel: {refused}; Linux 6.7+ with Landlock enabled confines them"
    if abi < REQUIRED_ABI:
        if mode == "required":
            return f"Landlock ABI {abi}: jobs are refused (confinement 'required' needs ABI 4 for TCP, Linux 6.7+)"
        return f"Landlock ABI {abi}: jobs run confined (files, exec) but TCP is NOT confined (ABI 4, Linux 6.7+)"
    scoped = "unix-socket and signal scopes" if abi >= 6 else "no unix-socket or signal scopes before ABI 6"
    return f"Landlock ABI {abi}: jobs run confined (files, exec, TCP, {scoped})"


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        _log.warning(message)


def apply_confinement(conf: Confinement, mode: str = "preferred") -> ConfinementReport:
    """Confine the calling process (and all it starts from now on) to ``conf``, for good.

    Call it before the process starts any thread: existing threads would stay unconfined. Without
    Landlock, ``"preferred"`` and ``"off"`` run unconfined after one WARNING line; ``"required"``
    raises. Where the kernel's ABI lacks rights (TCP before ABI 4, ioctl before 5, scopes before
    6) the rest is enforced and the report says what. A confined process also drops every Linux
    capability it holds (a root process would otherwise keep raw sockets, module loading ...).

    Args:
        conf: what the process may touch.
        mode: the site's :data:`ConfinementMode`.

    Returns:
        What is now enforced.

    Raises:
        ValueError: an unknown mode.
        ConfinementUnavailable: ``"required"`` on a kernel without Landlock ABI 4.
        ConfinementError: the process already runs other threads, or the kernel refused a rule.
    """
    check_confinement_mode(mode)
    if mode == "off":
        _warn_once("WARNING: job confinement is OFF at this site: job code runs with all the rights of this process")
        return ConfinementReport(mode)
    abi = ll.landlock_abi()
    if abi < REQUIRED_ABI and mode == "required":
        have = f"Landlock ABI {abi}" if abi else "no Landlock"
        raise ConfinementUnavailable(
            f"this site requires job confinement and the kernel has {have} (ABI {REQUIRED_ABI}, Linux 6.7+, needed)"
        )
    if abi == 0:
        _warn_once(
            "WARNING: no Landlock in this kernel: job code runs UNCONFINED "
            "(set confinement to 'required' to refuse jobs on such machines)"
        )
        return ConfinementReport(mode)
    threads = ll.thread_count()
    if threads > 1:
        raise ConfinementError(
            f"{threads} threads already run in this process and would stay unconfined: confine before starting threads"
        )
    missing: list[str] = []
    try:
        with ll.Ruleset(ll.fs_rights(abi), _ALL_NET, _ALL_SCOPES, abi=abi) as ruleset:
            for paths, rights in (
                (conf.read_only, _READ),
                (conf.read_write, _WRITE),
                (conf.executables, _EXECUTE),
                (conf.devices, _DEVICE),
            ):
                for path in paths:
                    try:
                        ruleset.allow_path(path, rights)
                    except (FileNotFoundError, NotADirectoryError):
                        missing.append(path)
            for port in conf.tcp_bind:
                ruleset.allow_port(port, ll.ACCESS_NET_BIND_TCP)
            for port in _ports(conf.tcp_connect, conf.tcp_connect_ranges):
                ruleset.allow_port(port, ll.ACCESS_NET_CONNECT_TCP)
            _drop_capabilities()
            ruleset.restrict_self()
    except OSError as e:
        raise ConfinementError(f"cannot confine this process: {e}") from None
    if abi < REQUIRED_ABI:
        _warn_once(f"WARNING: Landlock ABI {abi}: files are confined but TCP is NOT (ABI 4, Linux 6.7+)")
    return ConfinementReport(mode, abi, _enforced(abi), tuple(missing))


def _ports(ports: Sequence[int], ranges: Sequence[tuple[int, int]]) -> list[int]:
    every = set(ports)
    for first, last in ranges:
        every.update(range(first, last + 1))
    return sorted(every)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """Clear this thread's effective, permitted and inheritable capabilities (ambient ones go with them).

    With ``no_new_privs`` (set by the restriction that follows) an ``execve`` cannot give them back,
    not even to uid 0. A process that holds none is left as it is.
    """
    data = (_CapData * 2)()
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3: two 32-bit halves
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    if any(d.effective or d.permitted or d.inheritable for d in data):
        if libc.capset(ctypes.byref(header), (_CapData * 2)()) != 0:
            raise OSError(ctypes.get_errno(), "capset (dropping capabilities) failed")


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's ephemeral TCP port range (``/proc/sys/net/ipv4/ip_local_port_range``; IPv6 uses it too)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first, last = (int(v) for v in f.read().split())
        return first, last
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def python_installation_paths() -> tuple[str, ...]:
    """The folders this Python imports from: its prefixes, the absolute ``sys.path`` entries, and the
    folders of editable installs (clara-fl's own package folder always).

    Left out: the ``''`` / relative entries of ``sys.path`` and every entry that is the working
    directory, holds it, or lies inside it. At an FL site the working directory is the site
    workspace: its startup kit, local configuration and other jobs.
    """
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:
        cwd = ""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    for entry in sys.path:
        if not entry or not os.path.isabs(entry) or not os.path.exists(entry):
            continue
        real = os.path.realpath(entry)
        if cwd and (_within(cwd, real) or _within(real, cwd)):
            continue
        paths.append(entry)
    paths.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the clara_fl package
    for finder in sys.meta_path:  # setuptools' editable installs map package names to folders
        mapping = getattr(sys.modules.get(getattr(finder, "__module__", "") or ""), "MAPPING", None)
        if isinstance(mapping, dict):
            paths += [p for p in mapping.values() if isinstance(p, str) and os.path.isabs(p)]
    return tuple(dict.fromkeys(os.path.normpath(p) for p in paths))


def _interpreters() -> tuple[str, ...]:
    """The interpreter as started (a virtual environment's link), the file it resolves to, and its ELF
    program interpreter (the dynamic loader, which ``execve`` opens for execution too)."""
    paths = [sys.executable, os.path.realpath(sys.executable)]
    loader = _elf_interpreter(paths[1])
    if loader:
        paths += [loader, os.path.realpath(loader)]
    return tuple(dict.fromkeys(p for p in paths if p))


def _elf_interpreter(path: str) -> str | None:
    """The ``PT_INTERP`` of an ELF executable (``/lib64/ld-linux-x86-64.so.2``), None for a static one."""
    import struct

    try:
        with open(path, "rb") as f:
            ident = f.read(64)
            if ident[:4] != b"\x7fELF":
                return None
            end = "<" if ident[5] == 1 else ">"
            if ident[4] == 2:  # 64-bit
                phoff, phentsize, phnum = (
                    struct.unpack_from(end + "Q", ident, 32)[0],
                    *struct.unpack_from(end + "HH", ident, 54),
                )
                layout = end + "IIQQQQQQ"  # type, flags, offset, vaddr, paddr, filesz, ...
                offset_at, size_at = 2, 5
            else:
                phoff, phentsize, phnum = (
                    struct.unpack_from(end + "I", ident, 28)[0],
                    *struct.unpack_from(end + "HH", ident, 42),
                )
                layout = end + "IIIIIIII"  # type, offset, vaddr, paddr, filesz, ...
                offset_at, size_at = 1, 4
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                header = struct.unpack(layout, f.read(struct.calcsize(layout)))
                if header[0] == 3:  # PT_INTERP
                    f.seek(header[offset_at])
                    return f.read(header[size_at]).rstrip(b"\0").decode() or None
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def process_confinement(
    read_only: Sequence[str],
    read_write: Sequence[str],
    *,
    ddp: bool = False,
    rendezvous_port: int | None = None,
) -> Confinement:
    """A Python process that reads ``read_only`` and writes ``read_write``, and nothing else of the site.

    Around the given folders it grants what the runtime cannot work without: reading the Python
    installation (:func:`python_installation_paths`) and the system files in
    :data:`SYSTEM_READ_ONLY`, writing ``/dev/null`` and ``/dev/shm``, executing the interpreter,
    and on a GPU machine the NVIDIA device files. TCP: see :func:`job_confinement`.

    Args:
        read_only: folders and files to read.
        read_write: folders to write (and read).
        ddp: allow the TCP a ``torchrun --standalone`` gloo/NCCL run between this machine's processes needs.
        rendezvous_port: a fixed c10d rendezvous / ``MASTER_PORT`` to bind and connect to as well.

    Raises:
        ValueError: a relative path or a port outside 0..65535.
    """
    for path in (*read_only, *read_write):
        if not os.path.isabs(path):
            raise ValueError(f"confinement paths must be absolute: {path!r}")
    devices = _existing(GPU_DEVICE_GLOBS)
    tcp_bind: tuple[int, ...] = ()
    tcp_connect: tuple[int, ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()
    if ddp:
        # gloo (and the c10d store of --standalone) listen on ports the kernel chooses (bind port 0)
        # and connect to their peers' listening ports, which are ephemeral ports.
        tcp_bind, ranges = (0,), (ephemeral_port_range(),)
    if rendezvous_port is not None:
        if not 0 < rendezvous_port <= 65535:
            raise ValueError(f"not a TCP port: {rendezvous_port}")
        tcp_bind, tcp_connect = (*tcp_bind, rendezvous_port), (rendezvous_port,)
    system = (*SYSTEM_READ_ONLY, *(_existing(DDP_READ_ONLY) if ddp else ()), *(GPU_READ_ONLY if devices else ()))
    return Confinement(
        read_only=tuple(dict.fromkeys((*read_only, *python_installation_paths(), *system))),
        read_write=tuple(dict.fromkeys((*read_write, *SYSTEM_READ_WRITE))),
        executables=_interpreters(),
        devices=devices,
        tcp_bind=tcp_bind,
        tcp_connect=tcp_connect,
        tcp_connect_ranges=ranges,
    )


def _existing(patterns: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted({path for pattern in patterns for path in glob.glob(pattern)}))


def job_confinement(
    job_dir: str,
    data_roots: Sequence[str],
    temp_dir: str,
    *,
    ddp: bool = False,
    rendezvous_port: int | None = None,
) -> Confinement:
    """What a job's config code may touch at a site.

    * write: ``job_dir`` and ``temp_dir`` (give the process ``TMPDIR=temp_dir``,
      :func:`confined_environment`), ``/dev/null``, ``/dev/shm``;
    * read: those, the ``data_roots``, the Python installation and the system files of
      :func:`process_confinement`; never the site workspace (the working directory), /tmp, /root,
      /home or all of /etc;
    * execute: the Python interpreter only (no shell, no other program);
    * TCP: nothing, unless ``ddp``. With ``ddp=True``: bind to a kernel-chosen port (port 0) and
      connect to the kernel's ephemeral range (:func:`ephemeral_port_range`), which is what
      ``torchrun --standalone`` with gloo needs: its c10d store and every gloo rank listen on
      ephemeral ports and connect to each other's. Landlock rules name ports, not addresses, so
      that still lets the job listen on a kernel-chosen port of every interface and connect to
      any host's port in the ephemeral range; ``rendezvous_port`` adds one fixed port to both.

    Args:
        job_dir: the job's folder (at a site: its app folder; it holds the MMAR).
        data_roots: folders the site keeps the job's data in (read only).
        temp_dir: the job's private temporary folder.
        ddp: the job runs several processes of torch.distributed on this machine.
        rendezvous_port: a fixed c10d rendezvous / ``MASTER_PORT`` chosen by the parent.

    Raises:
        ValueError: a relative path or a bad port.
    """
    return process_confinement((job_dir, *data_roots), (job_dir, temp_dir), ddp=ddp, rendezvous_port=rendezvous_port)


# Python 3.11's multiprocessing binds its listener sockets at TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX (a
# DataLoader's workers hand tensors over through them). A socket path over 107 bytes fails to bind in the
# worker's feeder thread, and the DataLoader then waits for its first batch forever: a confined process's
# TMPDIR must leave room for that suffix.
UNIX_SOCKET_PATH_MAX = 107
MULTIPROCESSING_SOCKET_SUFFIX = len("/pymp-XXXXXXXX/listener-XXXXXXXX")
TEMP_DIR_MAX = UNIX_SOCKET_PATH_MAX - MULTIPROCESSING_SOCKET_SUFFIX


def make_temp_dir(prefix: str) -> str:
    """A new private temporary folder for a confined child, where its sockets' paths fit: under this process's
    temporary folder, else under /tmp or /var/tmp when that path is too long.

    Raises:
        OSError: no such folder can be made.
    """
    for root in dict.fromkeys((tempfile.gettempdir(), "/tmp", "/var/tmp")):
        fits = len(os.path.join(os.path.abspath(root), prefix + "X" * 8)) <= TEMP_DIR_MAX
        if fits and os.path.isdir(root) and os.access(root, os.W_OK | os.X_OK):
            return tempfile.mkdtemp(prefix=prefix, dir=root)
    raise OSError(f"no temporary folder with a path of at most {TEMP_DIR_MAX} characters is writable (set TMPDIR)")


def confined_environment(temp_dir: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a confined child: its temporary and cache folders are ``temp_dir``
    (matplotlib, torch and others would write under ``~``) and it writes no bytecode (the Python
    installation is read-only to it).

    Args:
        temp_dir: the child's temporary folder (writable in its confinement; :func:`make_temp_dir`).
        base: the environment to start from; this process's when None.

    Raises:
        ValueError: ``temp_dir``'s path is too long for the sockets a DataLoader's workers bind in it.
    """
    if len(os.path.abspath(temp_dir)) > TEMP_DIR_MAX:
        raise ValueError(
            f"{temp_dir}: a confined process's temporary folder needs a path of at most {TEMP_DIR_MAX} characters "
            "(multiprocessing binds sockets in it); use make_temp_dir()"
        )
    env = dict(os.environ if base is None else base)
    env.update(
        TMPDIR=temp_dir,
        TEMP=temp_dir,
        TMP=temp_dir,
        XDG_CACHE_HOME=temp_dir,
        MPLCONFIGDIR=temp_dir,
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def spawn_args(conf: Confinement, mode: str) -> list[str]:
    """The arguments a parent puts first on a confining child's command line (:func:`confine_child_from_argv`).

    Args:
        conf: the child's confinement.
        mode: the site's confinement mode.

    Raises:
        ValueError: an unknown mode.
    """
    return [CONFINEMENT_ARG, conf.to_json(), MODE_ARG, check_confinement_mode(mode)]


def confine_child_from_argv(argv: Sequence[str] | None = None) -> tuple[ConfinementReport, list[str]]:
    """First thing in a child entry point: confine this process as its parent asked.

    Reads ``--confinement JSON_OR_FILE`` (the JSON of :meth:`Confinement.to_json`, or a file that
    holds it) and ``--confinement-mode MODE`` from ``argv`` and applies them. Call it before
    importing torch or reading any job file.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The report and the remaining arguments (both options removed).

    Raises:
        ConfinementError: the options are missing or malformed, or confinement failed;
            :class:`ConfinementUnavailable` under ``"required"`` without Landlock.
    """
    rest: list[str] = []
    values: dict[str, str] = {}
    args = list(sys.argv[1:] if argv is None else argv)
    i = 0
    while i < len(args):
        if args[i] in (CONFINEMENT_ARG, MODE_ARG):
            if i + 1 >= len(args):
                raise ConfinementError(f"{args[i]} needs a value")
            values[args[i]] = args[i + 1]
            i += 2
        else:
            rest.append(args[i])
            i += 1
    if CONFINEMENT_ARG not in values:
        raise ConfinementError(f"{CONFINEMENT_ARG} is missing: a confining child runs only as its parent starts it")
    try:
        mode = check_confinement_mode(values.get(MODE_ARG, "preferred"), MODE_ARG)
    except ValueError as e:
        raise ConfinementError(str(e)) from None
    text = values[CONFINEMENT_ARG]
    if not text.lstrip().startswith("{"):
        try:
            with open(text) as f:
                text = f.read()
        except OSError as e:
            raise ConfinementError(f"cannot read the confinement file: {e}") from None
    return apply_confinement(Confinement.from_json(text), mode), rest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clara_fl.runtime.confinement --confinement J --confinement-mode M -- PROGRAM ARGS``.

    Confines itself, then ``exec``\\ s PROGRAM (which must be an executable the confinement
    grants, i.e. the Python interpreter); PROGRAM and everything it starts stay confined.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args or args.index("--") == len(args) - 1:
        print("usage: python -m clara_fl.runtime.confinement --confinement J --confinement-mode M -- PROGRAM ARGS",
              file=sys.stderr)  # fmt: skip
        return 2
    split = args.index("--")
    try:
        report, extra = confine_child_from_argv(args[:split])
    except ConfinementError as e:
        print(f"confinement: error: {e}", file=sys.stderr)
        return 2
    if extra:
        print(f"confinement: error: unexpected arguments {extra}", file=sys.stderr)
        return 2
    if os.environ.get("CLARA_FL_CONFINEMENT_VERBOSE"):
        print(f"confinement: {report.describe()}", file=sys.stderr)
    program = args[split + 1 :]
    try:
        os.execv(program[0], program)
    except OSError as e:
        print(f"confinement: error: cannot run {program[0]}: {e}", file=sys.stderr)
        return 126
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
