"""FLARE log lines: what the server and the sites write to ``log.txt`` while a job runs.

Shared by the report's round timeline and ``clara-fl simulate``'s progress line. FLARE writes
``2026-12-02 02:50:40,540 - ScatterAndGather - INFO - [identity=..., peer=site-1, ...] - Round 0 started.``;
the console copy drops the logger name and the context, which these patterns do not need.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["LogEvent", "LogParser", "parse_events", "parse_line"]

_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+)")
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("round_started", re.compile(r"\bRound (\d+) started")),
    ("round_finished", re.compile(r"\bRound (\d+) finished")),
    ("training_finished", re.compile(r"Finished (?:FedAvg|ScatterAndGather)")),
    ("task_assigned", re.compile(r"(?:task_name=(\w+).*)?assigned task to client ([\w.@-]+?):\s*(?:name=(\w+))?")),
    ("task_result", re.compile(r"got result from client ([\w.@-]+) for task: name=(\w+)")),
    ("aggregation_started", re.compile(r"Start aggregation|aggregating \d+ update")),
    ("aggregation_finished", re.compile(r"End aggregation")),
    ("site_metric", re.compile(r"validation metric ([-+\d.eE]+|nan|inf) from client ([\w.@-]+)")),
    ("before_train_validate", re.compile(r"before_train_validate: (\{.*\})")),
    ("site_round_training", re.compile(r"round (\d+): training")),
]


@dataclass(frozen=True)
class LogEvent:
    """One recognised log line: its time (seconds since the epoch, local clock), kind and fields."""

    time: float
    kind: str
    round: int | None = None
    site: str | None = None
    task: str | None = None
    value: float | None = None
    metrics: dict[str, float] | None = None


def parse_line(line: str, time: float | None = None) -> LogEvent | None:
    """The event a FLARE log line records, or None for the many lines the report does not use.

    A line without a timestamp is read at ``time`` (the last timestamp seen), or skipped without one.
    """
    time = _timestamp(line) or time
    if time is None:
        return None
    for kind, pattern in _PATTERNS:
        found = pattern.search(line)
        if found:
            return _event(kind, time, found.groups())
    return None


def _timestamp(line: str) -> float | None:
    stamp = _TIMESTAMP.match(line)
    if not stamp:
        return None
    return datetime.strptime(stamp.group(1).replace(".", ","), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _event(kind: str, time: float, groups: tuple[str, ...]) -> LogEvent | None:
    if kind in ("round_started", "round_finished", "site_round_training"):
        return LogEvent(time, kind, round=int(groups[0]))
    if kind == "task_assigned":
        return LogEvent(time, kind, task=groups[0] or groups[2], site=groups[1])
    if kind == "task_result":
        return LogEvent(time, kind, site=groups[0], task=groups[1])
    if kind == "site_metric":
        return LogEvent(time, kind, value=float(groups[0]), site=groups[1])
    if kind == "before_train_validate":
        metrics = _literal_dict(groups[0])
        return LogEvent(time, kind, metrics=metrics) if metrics is not None else None
    return LogEvent(time, kind)


def _literal_dict(text: str) -> dict[str, float] | None:
    try:
        value: Any = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, dict):
        return None
    return {str(k): float(v) for k, v in value.items() if isinstance(v, (int, float))}


class LogParser:
    """Parses a log line by line. A line without a timestamp continues the one before: FLARE's ModelController
    logs ``Round N started.`` centred on a line of its own, below the timestamped one."""

    def __init__(self) -> None:
        self._time: float | None = None

    def parse(self, line: str) -> LogEvent | None:
        self._time = _timestamp(line) or self._time
        return parse_line(line, self._time)


def parse_events(lines: Iterable[str]) -> Iterator[LogEvent]:
    """The recognised events of a log, in order."""
    parser = LogParser()
    for line in lines:
        event = parser.parse(line)
        if event is not None:
            yield event
