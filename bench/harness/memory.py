"""Memory of a run: the summed RSS of this process's descendants, sampled while a run goes on (figure 10), and the
RSS series a process's probe records give per round (figure 5)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")


def slope(values: Sequence[float]) -> float | None:
    """Least-squares slope per step (MB per round)."""
    n = len(values)
    if n < 2:
        return None
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    sxx = sum((i - mean_x) ** 2 for i in range(n))
    return sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) / sxx


def children_of(proc: str = "/proc") -> dict[int, list[int]]:
    """Every process's children, by parent pid (from ``/proc/<pid>/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "stat")) as f:
                stat = f.read()
        except OSError:
            continue  # ended meanwhile
        # the name (field 2) may hold spaces and parentheses: the fields after its last ')' are plain
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(root: int, children: dict[int, list[int]]) -> list[int]:
    """The pids under ``root`` (not ``root`` itself), at any depth."""
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def rss_bytes(pid: int, proc: str = "/proc") -> int:
    """A process's resident set size (0 when it has ended)."""
    try:
        with open(os.path.join(proc, str(pid), "statm")) as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class TreeRss:
    """Samples the summed RSS of this process's descendants every ``interval_s`` while inside ``with``.

    The sum counts pages that processes share (the Python and torch libraries) once per process: it is what the
    processes' RSS add up to, an upper bound on the memory they need together.
    """

    def __init__(self, interval_s: float = 0.5, root: int | None = None) -> None:
        self.interval_s = interval_s
        self.root = os.getpid() if root is None else root
        self.peak_bytes = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-tree-rss", daemon=True)

    def sample(self) -> int:
        pids = descendants(self.root, children_of())
        total = sum(rss_bytes(pid) for pid in pids)
        self.samples += 1
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, len(pids)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


def process_of(record: dict[str, Any]) -> str | None:
    """The process a probe record marks a round of: ``<site> training`` (the site's confined process, after the
    trainer's run), ``<site> FLARE`` (the site's FLARE process, after ``ClaraLearner.train``) or ``server`` (after
    the persistor saved the round's global model); None for any other call."""
    kind, site = record.get("kind", "engine"), record["site"]
    if kind == "engine" and record["engine"].endswith("Trainer") and site != "?":
        return f"{site} training"
    if kind == "wrapper" and record["method"] == "train" and site != "?":
        return f"{site} FLARE"
    if kind == "server":
        return "server"
    return None


def round_series(probe: list[dict[str, Any]], field: str = "rss") -> dict[str, list[float]]:
    """``field`` after each round, per process (:func:`process_of`), from bench/probe's records: RSS in MiB, or
    another numeric field as recorded (``threads``: the process's thread count)."""
    series: dict[str, list[float]] = {}
    for record in sorted(probe, key=lambda r: r["end"]):
        name = process_of(record)
        if name is None or field not in record:
            continue
        value = record[field]
        series.setdefault(name, []).append(value / 2**20 if field == "rss" else value)
    return series


def last_thread_names(probe: list[dict[str, Any]], process: str) -> dict[str, int]:
    """``process``'s Python threads by name (numbers folded) at its last round, as the probe recorded them; empty
    when the probe did not record names."""
    marking = [r for r in probe if process_of(r) == process and "thread_names" in r]
    return dict(max(marking, key=lambda r: r["end"])["thread_names"]) if marking else {}


def site_totals(series: dict[str, list[float]]) -> dict[str, list[float]]:
    """Each site's RSS per round, its training and FLARE processes together (the rounds both recorded)."""
    totals = {}
    for name in series:
        if name.endswith(" training"):
            site = name.removesuffix(" training")
            training, flare = series[name], series.get(f"{site} FLARE", [])
            n = min(len(training), len(flare))
            totals[site] = [a + b for a, b in zip(training[:n], flare[:n], strict=True)]
    return totals
