"""FLARE log lines: what the server and the sites write to ``log.txt`` while a job runs.

The fallback for runs without event files (:mod:`clara_fl.runtime.events`; jobs downloaded from runs before
clara-fl wrote them, or jobs with FLARE's own workflows): the report's round timeline and ``clara-fl simulate``'s
progress line read the lines as the events the workflows and Learners now write. FLARE writes
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

from clara_fl.runtime import events as ev

__all__ = ["LogEvent", "LogParser", "as_events", "parse_events", "parse_line"]

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

    def as_event(self) -> ev.Event | None:
        """The event record this line stands for, where it stands for one by itself."""
        kind = _EVENT_KINDS.get(self.kind)
        if kind is None:
            return None
        fields = {"task": self.task} if self.task else {}
        return ev.Event(kind, self.time, self.round, self.site, fields)


# the log's kinds that are one event record each; before_train_validate, site_round_training and site_metric
# need the lines around them (see as_events)
_EVENT_KINDS = {
    "round_started": ev.ROUND_STARTED,
    "round_finished": ev.ROUND_FINISHED,
    "training_finished": ev.TRAINING_FINISHED,
    "task_assigned": ev.TASK_SENT,
    "task_result": ev.TASK_RESULT,
    "aggregation_started": ev.AGGREGATION_STARTED,
    "aggregation_finished": ev.AGGREGATION_FINISHED,
}


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


def as_events(log_events: Iterable[LogEvent], key_metric: str) -> list[ev.Event]:
    """A log's events as the records the workflows and Learners write.

    A site log's ``before_train_validate: {...}`` is the global model's validation of the round that the next
    ``round N: training`` names; a server log's ``validation metric V from client S`` (IntimeModelSelector) is
    ``key_metric`` of site S in the round last started.
    """
    found: list[ev.Event] = []
    pending: LogEvent | None = None
    current_round: int | None = None
    for log_event in log_events:
        if log_event.kind == "before_train_validate":
            pending = log_event
        elif log_event.kind == "site_round_training":
            if pending is not None and pending.metrics is not None:
                found.append(ev.Event(ev.GLOBAL_MODEL_VALIDATED, pending.time, log_event.round, None, pending.metrics))
            pending = None
            found.append(ev.Event(ev.SITE_TRAINING_STARTED, log_event.time, log_event.round))
        elif log_event.kind == "site_metric":
            if current_round is not None and log_event.value is not None:
                metrics = {key_metric: log_event.value}
                found.append(ev.Event(ev.SITE_METRIC, log_event.time, current_round, log_event.site, metrics))
        else:
            if log_event.kind == "round_started":
                current_round = log_event.round
            event = log_event.as_event()
            if event is not None:
                found.append(event)
    return found
