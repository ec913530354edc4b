"""Linux Landlock through ctypes: the kernel's own access control for an unprivileged process.

A process builds a *ruleset* (the rights it handles, each denied unless a rule grants it), adds rules
(a file hierarchy and the rights granted beneath it; a TCP port and the rights granted on it), then
*restricts itself* with it. From then on the kernel refuses, with ``EACCES``/``EPERM``, everything the
ruleset handles and no rule grants; nothing can lift it again, and it survives ``execve``.

Landlock confines **the calling thread and the processes and threads it starts afterwards**. Threads
that already run stay free: restrict a fresh process before it starts any thread (before importing
torch, whose thread pools start early, before a DataLoader or a logging thread), or start a small
launcher that restricts itself and then ``exec``\\ s the worker.

The kernel's ABI grew by versions; this module handles only the rights the running kernel knows and
masks out the others (the "best effort" pattern of the kernel's Landlock documentation):

====  =====  ============================================================================
ABI   Linux  adds
====  =====  ============================================================================
1     5.13   file access rights (execute, read, write, make and remove entries)
2     5.19   ``REFER``: linking and renaming a file into another folder
3     6.2    ``TRUNCATE``
4     6.7    TCP ``bind`` and ``connect`` by port
5     6.10   ``IOCTL_DEV``: ioctl on character and block devices
6     6.12   scopes: abstract unix sockets and signals to processes outside the domain
7     6.15   audit-log flags (nothing to handle here)
====  =====  ============================================================================

Not covered by any ABI up to 7: UDP and other non-TCP sockets, connecting to a *named* unix socket,
reading file metadata (``stat``), and the path walk itself; see :mod:`clara_fl.runtime.confinement`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import sys
from types import TracebackType

__all__ = [
    "ACCESS_FS_EXECUTE",
    "ACCESS_FS_WRITE_FILE",
    "ACCESS_FS_READ_FILE",
    "ACCESS_FS_READ_DIR",
    "ACCESS_FS_REMOVE_DIR",
    "ACCESS_FS_REMOVE_FILE",
    "ACCESS_FS_MAKE_CHAR",
    "ACCESS_FS_MAKE_DIR",
    "ACCESS_FS_MAKE_REG",
    "ACCESS_FS_MAKE_SOCK",
    "ACCESS_FS_MAKE_FIFO",
    "ACCESS_FS_MAKE_BLOCK",
    "ACCESS_FS_MAKE_SYM",
    "ACCESS_FS_REFER",
    "ACCESS_FS_TRUNCATE",
    "ACCESS_FS_IOCTL_DEV",
    "ACCESS_NET_BIND_TCP",
    "ACCESS_NET_CONNECT_TCP",
    "SCOPE_ABSTRACT_UNIX_SOCKET",
    "SCOPE_SIGNAL",
    "FILE_RIGHTS",
    "LandlockError",
    "Ruleset",
    "fs_rights",
    "landlock_abi",
    "net_rights",
    "scopes",
    "thread_count",
]

# include/uapi/linux/landlock.h
ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5
ACCESS_NET_BIND_TCP = 1 << 0  # ABI 4
ACCESS_NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_FS_ABI_1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
# The rights that make sense on a file (not a folder): the kernel refuses a file rule with any other.
FILE_RIGHTS = ACCESS_FS_EXECUTE | ACCESS_FS_WRITE_FILE | ACCESS_FS_READ_FILE | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV

_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2
_PR_SET_NO_NEW_PRIVS = 38
# landlock_create_ruleset, landlock_add_rule, landlock_restrict_self: the same numbers on every
# architecture that has the generic syscall table or joined it after 5.13 (alpha and mips differ).
_SYSCALLS = (444, 445, 446)
_SAME_NUMBERS = {
    "x86_64",
    "amd64",
    "i386",
    "i686",
    "aarch64",
    "arm64",
    "armv6l",
    "armv7l",
    "riscv64",
    "ppc64",
    "ppc64le",
    "s390x",
    "loongarch64",
}


class LandlockError(OSError):
    """A Landlock system call failed (``errno`` and the call's name in the message)."""


def fs_rights(abi: int) -> int:
    """All file-system rights ABI ``abi`` knows (0 without Landlock).

    Args:
        abi: the kernel's Landlock ABI, as :func:`landlock_abi` returns it.
    """
    if abi < 1:
        return 0
    rights = _FS_ABI_1
    if abi >= 2:
        rights |= ACCESS_FS_REFER
    if abi >= 3:
        rights |= ACCESS_FS_TRUNCATE
    if abi >= 5:
        rights |= ACCESS_FS_IOCTL_DEV
    return rights


def net_rights(abi: int) -> int:
    """The network rights ABI ``abi`` knows: TCP bind and connect from ABI 4, else 0."""
    return ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP if abi >= 4 else 0


def scopes(abi: int) -> int:
    """The scopes ABI ``abi`` knows: abstract unix sockets and signals from ABI 6, else 0."""
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the uapi header: 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc


def _syscall(number: int, *args: object) -> int:
    return int(_c().syscall(ctypes.c_long(number), *args))


def _add_rule(ruleset_fd: int, rule_type: int, attr: ctypes.Structure) -> int:
    return _syscall(
        _SYSCALLS[1], ctypes.c_int(ruleset_fd), ctypes.c_int(rule_type), ctypes.byref(attr), ctypes.c_uint32(0)
    )


def _failed(call: str) -> LandlockError:
    code = ctypes.get_errno()
    return LandlockError(code, f"{call}: {os.strerror(code)}")


def landlock_abi() -> int:
    """The Landlock ABI version of the running kernel: 0 where there is none. Never raises.

    0 means: not Linux, an architecture whose syscall numbers this module does not know, a kernel
    without Landlock (``ENOSYS``), or Landlock built in but not enabled at boot (``EOPNOTSUPP``).
    """
    if not sys.platform.startswith("linux") or platform.machine().lower() not in _SAME_NUMBERS:
        return 0
    try:
        version = _syscall(_SYSCALLS[0], None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError, TypeError):
        return 0
    return max(version, 0)


def thread_count() -> int:
    """How many threads this process runs now (``/proc/self/task``); 0 where that cannot be read."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


class Ruleset:
    """A Landlock ruleset under construction; :meth:`restrict_self` enforces it on this thread.

    The handled rights are masked to those the running ABI knows, so a ruleset written for a newer
    kernel still works on an older one, with less enforced (:attr:`handled_fs` and the others say
    what). A right that is handled and granted by no rule is denied everywhere.

    Args:
        handled_fs: file-system rights to deny unless granted (``ACCESS_FS_*``).
        handled_net: TCP rights to deny unless granted per port (``ACCESS_NET_*``).
        scoped: IPC to refuse towards processes outside the domain (``SCOPE_*``).
        abi: the ABI to build for; the kernel's (:func:`landlock_abi`) when None.

    Raises:
        LandlockError: the kernel has no Landlock (``ENOSYS``/``EOPNOTSUPP``), or refuses the ruleset.
    """

    def __init__(self, handled_fs: int, handled_net: int = 0, scoped: int = 0, abi: int | None = None) -> None:
        self.abi = landlock_abi() if abi is None else abi
        if self.abi < 1:
            raise LandlockError(errno.EOPNOTSUPP, "landlock_create_ruleset: no Landlock in this kernel")
        self.handled_fs = handled_fs & fs_rights(self.abi)
        self.handled_net = handled_net & net_rights(self.abi)
        self.scoped = scoped & scopes(self.abi)
        attr = _RulesetAttr(self.handled_fs, self.handled_net, self.scoped)
        # Only the fields this ABI knows: an older kernel refuses a longer struct with E2BIG.
        size = 8 if self.abi < 4 else 16 if self.abi < 6 else 24
        fd = _syscall(_SYSCALLS[0], ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
        if fd < 0:
            raise _failed("landlock_create_ruleset")
        self._fd: int | None = fd

    @property
    def fd(self) -> int:
        """The ruleset's file descriptor (``LandlockError`` once closed)."""
        if self._fd is None:
            raise LandlockError(errno.EBADF, "the ruleset is closed")
        return self._fd

    def allow_path(self, path: str, rights: int) -> int:
        """Grant ``rights`` beneath ``path`` (a folder and everything inside it, or one file).

        Rights this ruleset does not handle are dropped; for a file only the file rights
        (:data:`FILE_RIGHTS`) are kept. Symbolic links are followed: the rule is on their target.

        Args:
            path: an existing folder or file.
            rights: ``ACCESS_FS_*`` flags.

        Returns:
            The rights the rule grants (0: no rule was added, nothing of ``rights`` is handled).

        Raises:
            FileNotFoundError: ``path`` does not exist (any ``OSError`` of ``open(O_PATH)``).
            LandlockError: the kernel refuses the rule.
        """
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            granted = rights & self.handled_fs
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                granted &= FILE_RIGHTS
            if granted and _add_rule(self.fd, _RULE_PATH_BENEATH, _PathBeneathAttr(granted, fd)) < 0:
                raise _failed(f"landlock_add_rule({path})")
            return granted
        finally:
            os.close(fd)

    def allow_port(self, port: int, rights: int) -> int:
        """Grant TCP ``rights`` on ``port`` (for bind, port 0 is "a port the kernel chooses").

        Args:
            port: 0 to 65535.
            rights: ``ACCESS_NET_BIND_TCP`` and/or ``ACCESS_NET_CONNECT_TCP``.

        Returns:
            The rights the rule grants (0 where the ABI handles no TCP: no rule was added).

        Raises:
            ValueError: a port outside 0..65535.
            LandlockError: the kernel refuses the rule.
        """
        if not 0 <= port <= 65535:
            raise ValueError(f"not a TCP port: {port}")
        granted = rights & self.handled_net
        if granted and _add_rule(self.fd, _RULE_NET_PORT, _NetPortAttr(granted, port)) < 0:
            raise _failed(f"landlock_add_rule(port {port})")
        return granted

    def restrict_self(self) -> None:
        """Enforce the ruleset on the calling thread and on everything it starts from now on.

        Sets ``no_new_privs`` first (required of an unprivileged process; set-user-ID programs then
        run without their privileges). Threads that already exist are NOT confined: call this before
        the process starts any. Closes the ruleset.

        Raises:
            LandlockError: ``prctl`` or ``landlock_restrict_self`` failed.
        """
        no_new_privs = (ctypes.c_int(_PR_SET_NO_NEW_PRIVS), *(ctypes.c_ulong(v) for v in (1, 0, 0, 0)))
        if _c().prctl(*no_new_privs) < 0:
            raise _failed("prctl(PR_SET_NO_NEW_PRIVS)")
        if _syscall(_SYSCALLS[2], ctypes.c_int(self.fd), ctypes.c_uint32(0)) < 0:
            raise _failed("landlock_restrict_self")
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Ruleset:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
