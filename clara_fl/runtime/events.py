"""A run's events as JSON lines: what the server workflow and each site's Learner and Validator did, and when.

``clara-fl report`` and ``clara-fl simulate``'s progress line read these records instead of the log's wording.
Each process role writes its own file in its FLARE app folder (the server's ``app_server/``, a site's
``app_<site>/``, where ``privacy_releases.jsonl`` is too), one record a line, flushed as it is written::

    {"kind": "round_started", "time": 1764640240.54, "round": 0, "site": null, "fields": {}}
    {"kind": "task_result", "time": 1764640251.02, "round": 0, "site": "site-1", "fields": {"task": "train", ...}}

A record's fields are plain JSON numbers and strings: event names, task names, return codes, metric values. A
site's records may be collected into a report at the server, so they hold nothing identifying: no case names,
paths or free exception text.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

__all__ = [
    "AGGREGATION_FINISHED",
    "AGGREGATION_STARTED",
    "EVENT_KINDS",
    "Event",
    "EventLog",
    "GLOBAL_MODEL_VALIDATED",
    "MODEL_VALIDATED",
    "ROUND_FINISHED",
    "ROUND_STARTED",
    "SERVER_EVENTS_FILE",
    "SITE_EVENTS_FILE",
    "SITE_METRIC",
    "SITE_MODEL_KEPT",
    "SITE_TRAINING_DONE",
    "SITE_TRAINING_STARTED",
    "TASK_RESULT",
    "TASK_SENT",
    "TRAINING_FINISHED",
    "TRAINING_STARTED",
    "event_log",
    "iter_events",
    "parse_event",
    "read_events",
    "round_number",
]

SERVER_EVENTS_FILE = "server_events.jsonl"
SITE_EVENTS_FILE = "site_events.jsonl"

# -- the server workflow's ------------------------------------------------------------------------
TRAINING_STARTED = "training_started"
ROUND_STARTED = "round_started"  # round
TASK_SENT = "task_sent"  # site; fields: task
TASK_RESULT = "task_result"  # site, round (when the result says); fields: task, return_code
AGGREGATION_STARTED = "aggregation_started"  # round
AGGREGATION_FINISHED = "aggregation_finished"  # round
ROUND_FINISHED = "round_finished"  # round
SITE_METRIC = "site_metric"  # site, round; fields: the site's metrics of the round's global model, sent with its result
TRAINING_FINISHED = "training_finished"

# -- a site's ---------------------------------------------------------------------------------------
GLOBAL_MODEL_VALIDATED = "global_model_validated"  # round; fields: the global model's metrics before training
SITE_TRAINING_STARTED = "site_training_started"  # round
SITE_TRAINING_DONE = "site_training_done"  # round; fields: steps
MODEL_VALIDATED = "model_validated"  # fields: model (its owner), then the metrics
# round; fields: metric, global, personalized (their scores), winner, kept (1/0), kept_score (keep_better_model)
SITE_MODEL_KEPT = "site_model_kept"

EVENT_KINDS = frozenset(
    {
        TRAINING_STARTED,
        ROUND_STARTED,
        TASK_SENT,
        TASK_RESULT,
        AGGREGATION_STARTED,
        AGGREGATION_FINISHED,
        ROUND_FINISHED,
        SITE_METRIC,
        TRAINING_FINISHED,
        GLOBAL_MODEL_VALIDATED,
        SITE_TRAINING_STARTED,
        SITE_TRAINING_DONE,
        MODEL_VALIDATED,
        SITE_MODEL_KEPT,
    }
)

Field = str | int | float


@dataclass(frozen=True)
class Event:
    """One record: its kind (one of :data:`EVENT_KINDS`), time (seconds since the epoch), round and site where
    they apply, and plain fields."""

    kind: str
    time: float
    round: int | None = None
    site: str | None = None
    fields: Mapping[str, Field] = field(default_factory=dict)

    def numbers(self) -> dict[str, float]:
        """The fields that are numbers (a metric event's metrics)."""
        return {k: float(v) for k, v in self.fields.items() if _is_number(v)}

    def text(self, name: str) -> str | None:
        value = self.fields.get(name)
        return value if isinstance(value, str) else None

    def to_json(self) -> str:
        return json.dumps(
            {"kind": self.kind, "time": self.time, "round": self.round, "site": self.site, "fields": dict(self.fields)}
        )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(fields: Mapping[str, object]) -> dict[str, Field]:
    """Fields as JSON numbers and strings: a non-finite number becomes a string ("nan"), anything else is refused."""
    plain: dict[str, Field] = {}
    for name, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(f"event field {name!r} must be a number or a string, not {type(value).__name__}")
        plain[str(name)] = value if not isinstance(value, float) or math.isfinite(value) else str(value)
    return plain


class EventLog:
    """Appends events to one JSON-lines file; safe to share between threads. Each record is written whole and
    flushed at once (the file is opened for each, so a file removed meanwhile is written anew)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()

    def write(
        self, kind: str, round: int | None = None, site: str | None = None, fields: Mapping[str, object] | None = None
    ) -> Event:
        """Append one event, timed now.

        Raises:
            ValueError: ``kind`` is not one of :data:`EVENT_KINDS`.
            TypeError: a field is not a number or a string.
        """
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        event = Event(kind, time.time(), None if round is None else int(round), site, _plain(fields or {}))
        line = event.to_json() + "\n"
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        return event


_logs: dict[str, EventLog] = {}
_logs_lock = threading.Lock()


def round_number(value: object, default: int | None = None) -> int | None:
    """A round as FLARE hands it over (a task header, a context property) for a record: an int, else ``default``."""
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else default


def event_log(folder: str | os.PathLike, name: str) -> EventLog:
    """The process's one writer of ``folder/name``: components writing the same file share its lock."""
    path = os.path.abspath(os.path.join(folder, name))
    with _logs_lock:
        return _logs.setdefault(path, EventLog(path))


def parse_event(line: str) -> Event | None:
    """One line's event, or None for a line that is not one (a write cut short, another program's line)."""
    try:
        record = json.loads(line)
        kind, stamp, round_, site = record["kind"], record["time"], record.get("round"), record.get("site")
        fields = record.get("fields") or {}
        if not isinstance(kind, str) or not _is_number(stamp) or not isinstance(fields, dict):
            return None
        if round_ is not None and not isinstance(round_, int):
            return None
        plain = {str(k): v for k, v in fields.items() if isinstance(v, str) or _is_number(v)}
        return Event(kind, float(stamp), round_, site if isinstance(site, str) else None, plain)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def iter_events(lines: Iterable[str]) -> Iterator[Event]:
    """The events of JSON lines, skipping the lines that are not events."""
    for line in lines:
        event = parse_event(line)
        if event is not None:
            yield event


def read_events(path: str | os.PathLike) -> list[Event]:
    """Every whole event of a file in order; a torn last line (its writer was killed mid-write) is skipped.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        return list(iter_events(f))
