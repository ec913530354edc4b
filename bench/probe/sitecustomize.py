"""Benchmark probe for FL site processes: put this folder on PYTHONPATH and set CLARA_FL_BENCH_PROBE=DIR.

Every Python process started with it (the simulator's server and site workers) wraps, as soon as
their modules are imported:

* ``ignite.engine.Engine.run``: the sites' local training and validation (kind ``engine``);
* the FL wrappers around them (kind ``wrapper``): ``ClaraLearner.train``/``validate`` (clara-fl) and
  ``MonaiAlgo.train``/``evaluate``/``get_weights`` (the MONAI path).

Each outermost call appends one JSON line to ``DIR/probe-<pid>.jsonl``: kind, class and method,
wall-clock start/end (``time.time()``), the site named in the working directory (a site's confined
process, which may not write to DIR, writes to ``.bench_probe/`` in its working directory instead), and the process's
RSS after the call, its peak RSS so far, its thread count and the bytes its sockets have sent and
received so far (``socket.socket`` send/sendall/recv/recv_into, which FLARE's TCP driver uses; figure 9
reads the bytes a site sends per round from them). Nothing else changes: the time outside the engine runs
is what the FL machinery (wrapper + FLARE) costs per round, and the wrapper records split it into
the wrapper's own share and FLARE's.
"""

from __future__ import annotations

import os
import sys

_DIR = os.environ.get("CLARA_FL_BENCH_PROBE")

# module -> [(class, method, kind)]
TARGETS = {
    "ignite.engine.engine": [("Engine", "run", "engine")],
    "clara_fl.fl.site.learner": [("ClaraLearner", "train", "wrapper"), ("ClaraLearner", "validate", "wrapper")],
    "monai.fl.client.monai_algo": [
        ("MonaiAlgo", "train", "wrapper"),
        ("MonaiAlgo", "evaluate", "wrapper"),
        ("MonaiAlgo", "get_weights", "wrapper"),
    ],
}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return -1


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


_BYTES = {"sent": 0, "received": 0}


def _count_socket_bytes() -> None:
    """Count what every plain socket of this process sends and receives (approximate under threads)."""
    import socket

    cls = socket.socket
    send, sendall, recv, recv_into = cls.send, cls.sendall, cls.recv, cls.recv_into

    def counted_send(self, data, *args):  # type: ignore[no-untyped-def]
        sent = send(self, data, *args)
        _BYTES["sent"] += sent
        return sent

    def counted_sendall(self, data, *args):  # type: ignore[no-untyped-def]
        result = sendall(self, data, *args)
        _BYTES["sent"] += memoryview(data).nbytes
        return result

    def counted_recv(self, *args):  # type: ignore[no-untyped-def]
        data = recv(self, *args)
        _BYTES["received"] += len(data)
        return data

    def counted_recv_into(self, buffer, *args):  # type: ignore[no-untyped-def]
        received = recv_into(self, buffer, *args)
        _BYTES["received"] += received
        return received

    cls.send, cls.sendall, cls.recv, cls.recv_into = counted_send, counted_sendall, counted_recv, counted_recv_into  # type: ignore[method-assign]


def _site() -> str:
    import re

    for text in (os.getcwd(), " ".join(sys.argv)):
        found = re.findall(r"(site-\d+)", text)
        if found:
            return found[-1]
    return "?"


def _append(path: str, line: str) -> None:
    """Append to the probe file; a site's confined process may not write there (Landlock), so it writes
    beside its job, in ``.bench_probe/`` of its working directory (the job's app folder), where
    ``bench/run.py`` looks too."""
    try:
        with open(path, "a") as f:
            f.write(line)
    except PermissionError:
        inside = os.path.join(os.getcwd(), ".bench_probe")
        os.makedirs(inside, exist_ok=True)
        with open(os.path.join(inside, os.path.basename(path)), "a") as f:
            f.write(line)


def _patch(module: object, targets: list) -> None:
    import json
    import threading
    import time

    path = os.path.join(_DIR, f"probe-{os.getpid()}.jsonl")
    depth = threading.local()  # one nesting counter per kind and thread: only outermost calls are recorded

    for class_name, method, kind in targets:
        cls = getattr(module, class_name)
        original = getattr(cls, method)

        def wrapped(self, *args, __original=original, __kind=kind, __method=method, **kwargs):  # type: ignore[no-untyped-def]
            level = getattr(depth, __kind, 0)
            setattr(depth, __kind, level + 1)
            start = time.time()
            try:
                return __original(self, *args, **kwargs)
            finally:
                setattr(depth, __kind, level)
                if level == 0:
                    record = {
                        "pid": os.getpid(),
                        "site": _site(),
                        "kind": __kind,
                        "engine": type(self).__name__,
                        "method": __method,
                        "start": start,
                        "end": time.time(),
                        "rss": _rss_bytes(),
                        "peak_rss": _peak_rss_bytes(),
                        "threads": _threads(),
                        "bytes_sent": _BYTES["sent"],
                        "bytes_received": _BYTES["received"],
                    }
                    _append(path, json.dumps(record) + "\n")

        wrapped.__wrapped__ = original  # type: ignore[attr-defined]
        wrapped.__name__ = method
        setattr(cls, method, wrapped)


def _install() -> None:
    import importlib.abc
    import importlib.machinery

    class _Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
            if name not in TARGETS:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):  # type: ignore[no-untyped-def]
                exec_module(module)
                _patch(module, TARGETS[name])

            spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, _Hook())


if _DIR:
    os.makedirs(_DIR, exist_ok=True)
    _install()
    _count_socket_bytes()
