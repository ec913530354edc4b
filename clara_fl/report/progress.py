"""A running simulation in one line: round k of R, sites done, elapsed time, read from the server's log as it grows."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import IO

from clara_fl.report.logs import LogEvent, parse_line

__all__ = ["LogFollower", "SimulationProgress"]


@dataclass
class SimulationProgress:
    """What the server's log says so far."""

    total_rounds: int | None
    total_sites: int
    round: int | None = None
    rounds_finished: int = 0
    trained: set[str] = field(default_factory=set)
    validations: int = 0
    cross_site: bool = False

    def update(self, event: LogEvent) -> None:
        if event.kind == "round_started":
            self.round, self.trained = event.round, set()
        elif event.kind == "round_finished":
            self.rounds_finished += 1
        elif event.kind == "task_result" and event.task == "train" and event.site:
            self.trained.add(event.site)
        elif event.kind == "task_assigned" and event.task in ("submit_model", "validate"):
            self.cross_site = True
        elif event.kind == "task_result" and event.task == "validate":
            self.validations += 1

    def follow(self, follower: LogFollower) -> None:
        """Take in the lines the log gained since the last call."""
        for line in follower.new_lines():
            event = parse_line(line)
            if event is not None:
                self.update(event)

    def line(self, elapsed: float) -> str:
        clock = f"{int(elapsed) // 60:d}:{int(elapsed) % 60:02d}"
        if self.cross_site:
            return f"cross-site validation: {self.validations} results so far, {clock} elapsed"
        if self.round is None:
            return f"starting the simulator, {clock} elapsed"
        of = f" of {self.total_rounds}" if self.total_rounds else ""
        return f"round {self.round + 1}{of}: {len(self.trained)} of {self.total_sites} sites done, {clock} elapsed"


class LogFollower:
    """Reads the lines appended to a file since the last call; the file may not exist yet or be replaced."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._inode: int | None = None
        self._partial = ""
        # a log left by an earlier run in the same workspace is not this run's
        self._skip = os.path.getsize(path) if os.path.isfile(path) else 0

    def new_lines(self) -> list[str]:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return []
        if self._file is None or stat.st_ino != self._inode or stat.st_size < self._file.tell():
            if self._file is not None:
                self._file.close()
                self._skip = 0
            self._file = open(self.path, encoding="utf-8", errors="replace")
            self._inode, self._partial = stat.st_ino, ""
            self._file.seek(min(self._skip, stat.st_size))
        text = self._partial + self._file.read()
        lines = text.split("\n")
        self._partial = lines.pop()
        return lines

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

