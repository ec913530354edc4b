"""Benchmark probe for FL site processes: put this folder on PYTHONPATH and set CLARA_FL_BENCH_PROBE=DIR.

Every Python process started with it (the simulator's server and site workers) wraps, as soon as
their modules are imported:

* ``ignite.engine.Engine.run``: the sites' local training and validation (kind ``engine``);
* the FL wrappers around them (kind ``wrapper``): ``ClaraLearner.train``/``validate`` (clara-fl) and
  ``MonaiAlgo.train``/``evaluate``/``get_weights`` (the MONAI path).

Each outermost call appends one JSON line to ``DIR/probe-<pid>.jsonl``: kind, class and method,
wall-clock start/end (``time.time()``), the site named in the working directory (a site's confined
process, which may not write to DIR, writes to ``.bench_probe/`` in its working directory instead), and the process's
RSS after the call, its peak RSS so far, its thread count (and its Python threads by name, numbers folded) and the bytes its sockets have sent and
received so far (``socket.socket`` send/sendall/recv/recv_into, which FLARE's TCP driver uses; figure 9
reads the bytes a site sends per round from them). Nothing else changes: the time outside the engine runs
is what the FL machinery (wrapper + FLARE) costs per round, and the wrapper records split it into
the wrapper's own share and FLARE's.

The server's round is marked by ``ClaraModelPersistor.save_model`` (kind ``server``: once per round, whichever
workflow), so the server process's RSS per round is recorded too (figure 5).

Memory diagnosis (figure 5, or by hand), each off unless its variable is set:

* ``CLARA_FL_BENCH_HEAP=N``: every process traces its Python heap from the end of its first round on
  (``tracemalloc`` with ``CLARA_FL_BENCH_HEAP_FRAMES`` frames, default 6); every record carries the traced bytes
  (``heap``), so the growth of RSS minus heap is native (torch, glibc arenas). Every N rounds of a process (its round-marking call:
  the trainer's ``Engine.run`` in a site's confined process, ``ClaraLearner.train`` in the site's FLARE
  process, ``save_model`` in the server) it appends to ``heap-<pid>.jsonl`` the allocations grown most since
  round ``CLARA_FL_BENCH_HEAP_WARMUP`` (default 5), by traceback, and the gc-tracked objects grown most, by type.
* ``CLARA_FL_BENCH_MALLOC_TRIM=1``: ``malloc_trim(0)`` after every recorded call, to tell glibc fragmentation
  (RSS that trimming gives back) from memory still held.
"""

from __future__ import annotations

import os
import sys

_DIR = os.environ.get("CLARA_FL_BENCH_PROBE")

# module -> [(class, method, kind)]
TARGETS = {
    "ignite.engine.engine": [("Engine", "run", "engine")],
    "clara_fl.fl.site.learner": [("ClaraLearner", "train", "wrapper"), ("ClaraLearner", "validate", "wrapper")],
    "clara_fl.fl.server.persistor": [("ClaraModelPersistor", "save_model", "server")],
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


def _thread_names() -> dict:
    """The process's Python threads by name, numbers folded (``Thread-12 (run)`` -> ``Thread-# (run)``), a
    ``threading.Timer`` by the function it will call: which kind of thread a growing thread count is made of."""
    import collections
    import re
    import threading

    def kind(thread: threading.Thread) -> str:
        if isinstance(thread, threading.Timer):
            function = getattr(thread, "function", None)
            return f"Timer ({getattr(function, '__qualname__', function)!s})"
        return re.sub(r"\d+", "#", thread.name)

    return dict(collections.Counter(kind(t) for t in threading.enumerate()))


_HEAP_EVERY = int(os.environ.get("CLARA_FL_BENCH_HEAP") or 0)
_HEAP_WARMUP = int(os.environ.get("CLARA_FL_BENCH_HEAP_WARMUP") or 5)
_TRIM = os.environ.get("CLARA_FL_BENCH_MALLOC_TRIM") == "1"
_HEAP_STATE: dict = {"rounds": 0, "baseline": None, "types": None}


def _heap_bytes() -> int | None:
    import tracemalloc

    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None


def _marks_round(kind: str, engine: str, method: str) -> bool:
    """The call that ends a round in this process: local training, the Learner's train task, the server's save."""
    return (kind == "engine" and engine.endswith("Trainer")) or (kind, method) in (
        ("wrapper", "train"),
        ("server", "save_model"),
    )


def _type_counts() -> dict:
    import collections
    import gc

    def name(kind: type) -> str:  # a few extension types' __module__ is not a string
        return f"{getattr(kind, '__module__', None)!s}.{getattr(kind, '__qualname__', kind.__name__)!s}"

    return collections.Counter(name(type(o)) for o in gc.get_objects())


def _heap_report(path: str, site: str, role: str) -> None:
    """At the warm-up round take the baseline; every ``_HEAP_EVERY`` rounds after it, write what grew since."""
    import gc
    import json
    import tracemalloc

    _HEAP_STATE["rounds"] += 1
    rounds = _HEAP_STATE["rounds"]
    if not tracemalloc.is_tracing():
        # from the end of the first round on: tracing the imports and the build would only slow them down
        tracemalloc.start(int(os.environ.get("CLARA_FL_BENCH_HEAP_FRAMES") or 6))
    if rounds < _HEAP_WARMUP:
        return
    if _HEAP_STATE["baseline"] is None:
        gc.collect()
        _HEAP_STATE["baseline"] = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
        )
        _HEAP_STATE["types"] = _type_counts()
        return
    if (rounds - _HEAP_WARMUP) % _HEAP_EVERY:
        return
    gc.collect()
    own = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    snapshot = tracemalloc.take_snapshot().filter_traces(own)
    grown = [d for d in snapshot.compare_to(_HEAP_STATE["baseline"], "traceback") if d.size_diff > 0][:15]
    types = _type_counts()
    type_growth = sorted(((n - _HEAP_STATE["types"].get(t, 0), t) for t, n in types.items()), reverse=True)[:15]
    report = {
        "pid": os.getpid(),
        "site": site,
        "role": role,
        "round": rounds,
        "since_round": _HEAP_WARMUP,
        "rss": _rss_bytes(),
        "heap": _heap_bytes(),
        "objects": sum(types.values()),
        "grown": [
            {"size_diff": d.size_diff, "count_diff": d.count_diff, "traceback": [str(f) for f in d.traceback]}
            for d in grown
        ],
        "types_grown": [{"type": t, "count_diff": n} for n, t in type_growth if n > 0],
    }
    _append(path.replace("probe-", "heap-"), json.dumps(report) + "\n")


def _malloc_trim() -> None:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
                    if _TRIM:
                        _malloc_trim()
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
                        "thread_names": _thread_names(),
                        "bytes_sent": _BYTES["sent"],
                        "bytes_received": _BYTES["received"],
                        "heap": _heap_bytes(),
                    }
                    _append(path, json.dumps(record) + "\n")
                    if _HEAP_EVERY and _marks_round(__kind, record["engine"], __method):
                        try:
                            _heap_report(path, record["site"], __kind)
                        except Exception as e:  # a diagnosis must never fail the call it watches
                            _append(path.replace("probe-", "heap-"), json.dumps({"error": repr(e)}) + "\n")

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
