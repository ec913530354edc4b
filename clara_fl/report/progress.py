"""A running simulation in one line: round k of R, sites done, elapsed time, read from the server's events file
(:mod:`clara_fl.runtime.events`) as it grows, or from its log where the job's workflows write no events."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from clara_fl.report.logs import LogParser
from clara_fl.runtime import events as ev
from clara_fl.runtime.events import Event, iter_events

__all__ = ["DeferredOutput", "LogFollower", "SimulationProgress", "file_identity", "simulator_server_events"]

SIMULATOR_SERVER_APP = os.path.join("server", "simulate_job", "app_server")
CROSS_SITE_TASKS = ("submit_model", "validate")


def simulator_server_events(workspace: str | os.PathLike) -> str:
    """Where the server workflow of a ``clara-fl simulate`` run writes its events."""
    return os.path.join(os.path.abspath(workspace), SIMULATOR_SERVER_APP, ev.SERVER_EVENTS_FILE)


@dataclass
class SimulationProgress:
    """What the server has recorded so far."""

    total_rounds: int | None
    total_sites: int
    round: int | None = None
    rounds_finished: int = 0
    trained: set[str] = field(default_factory=set)
    validations: int = 0
    cross_site: bool = False
    parser: LogParser = field(default_factory=LogParser)
    from_events: bool = False  # the server's events file has appeared: its log is no longer read
    shown: str = "starting the simulator"  # the last step follow() returned

    def update(self, event: Event) -> None:
        task = event.text("task")
        if event.kind == ev.ROUND_STARTED:
            self.round, self.trained = event.round, set()
        elif event.kind == ev.ROUND_FINISHED:
            self.rounds_finished += 1
        elif event.kind == ev.TASK_RESULT and task == "train" and event.site:
            self.trained.add(event.site)
        elif event.kind == ev.TASK_SENT and task in CROSS_SITE_TASKS:
            self.cross_site = True
        elif event.kind == ev.TASK_RESULT and task == "validate":
            self.validations += 1

    def follow(self, log: LogFollower, events: LogFollower | None = None) -> list[str]:
        """Take in what the server recorded since the last call (its ``events`` file once there is one, else its
        ``log``); returns each step reached on the way."""
        steps = []
        for event in self._new_events(log, events):
            self.update(event)
            if self.step() != self.shown:
                self.shown = self.step()
                steps.append(self.shown)
        return steps

    def _new_events(self, log: LogFollower, events: LogFollower | None) -> list[Event]:
        if events is not None and (self.from_events or events.is_fresh()):
            if not self.from_events:  # the events say again, from the start, what the log said so far
                self._restart()
                self.from_events = True
            return list(iter_events(events.new_lines()))
        found = []
        for line in log.new_lines():
            parsed = self.parser.parse(line)
            event = parsed.as_event() if parsed is not None else None
            if event is not None:
                found.append(event)
        return found

    def _restart(self) -> None:
        self.round, self.rounds_finished, self.trained = None, 0, set()
        self.validations, self.cross_site = 0, False

    def step(self) -> str:
        """Where the run is, e.g. ``round 2 of 3: 1 of 2 sites done``."""
        if self.cross_site:
            return f"cross-site validation: {self.validations} results so far"
        if self.round is None:
            return "starting the simulator"
        of = f" of {self.total_rounds}" if self.total_rounds else ""
        return f"round {self.round + 1}{of}: {len(self.trained)} of {self.total_sites} sites done"

    def line(self, elapsed: float, step: str | None = None) -> str:
        """``step`` (default: the current one) with the elapsed time."""
        return f"{step or self.step()}, {int(elapsed) // 60:d}:{int(elapsed) % 60:02d} elapsed"


def file_identity(path: str) -> tuple[int, int, int] | None:
    """Inode, modification time and size: a file rewritten in place of another differs in one of them."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class LogFollower:
    """Reads the lines appended to a file since the last call; the file may not exist yet or be replaced.

    A file already there when following starts (an earlier run's log in the same workspace) is skipped
    until it is replaced or written to.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._inode: int | None = None
        self._partial = ""
        self._stale = file_identity(path)

    def is_fresh(self) -> bool:
        """Whether the file at ``path`` is this run's."""
        identity = file_identity(self.path)
        return identity is not None and identity != self._stale

    def new_lines(self) -> list[str]:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return []
        if self._file is None and not self.is_fresh():
            return []
        if self._file is None or stat.st_ino != self._inode or stat.st_size < self._file.tell():
            if self._file is not None:
                self._file.close()
            self._file = open(self.path, encoding="utf-8", errors="replace")
            self._inode, self._partial, self._stale = stat.st_ino, "", None
        text = self._partial + self._file.read()
        lines = text.split("\n")
        self._partial = lines.pop()
        return lines

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class DeferredOutput:
    """A child process's output, written to ``path`` once ``ready()`` holds and kept in memory until then.

    FLARE's simulator empties its workspace when it starts (keeping local/ and startup/): a file opened
    there before would vanish, so the output is held back until the server's new log appears.
    """

    def __init__(self, path: str, ready: Callable[[], bool]) -> None:
        self.path = path
        self.ready = ready
        self._held: list[bytes] = []
        self._file: IO[bytes] | None = None
        self._closed = False

    def pump(self, stream: IO[bytes]) -> None:
        """Copy ``stream`` until it ends (run it in a thread)."""
        for chunk in iter(stream.readline, b""):
            self.write(chunk)

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        if self._file is None and self.ready():
            self._open()
        if self._file is None:
            self._held.append(data)
            return
        self._file.write(data)
        self._file.flush()

    def close(self) -> None:
        """Write what is held back (the child ended before it was ready) and close the file."""
        if self._closed:
            return
        if self._file is None:
            self._open()
        self._closed = True
        if self._file is not None:
            self._file.close()

    def _open(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._file = open(self.path, "wb")
        self._file.write(b"".join(self._held))
        self._file.flush()
        self._held = []
