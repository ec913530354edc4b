"""The server's FL run state on disk: how far the rounds got and the best global model so far.

FLARE 2.9 keeps no server snapshot (``ServerEngine.persist_components`` does nothing), so a server killed
mid-job loses the round it was at. :class:`~clara_fl.fl.server.persistor.ClaraModelPersistor` writes this
file beside the global model after every round, atomically and after the model itself, so the file never
names a round whose model is not on disk. ``clara-fl job resume`` reads it to build the continuation job.
No FLARE or torch import: the resume command reads it where jobs are made.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.config.jsonio import load_json
from clara_fl.runtime.files import write_json_atomic

__all__ = ["STATE_FILE", "ServerRunState", "is_job_id", "read_run_state", "write_run_state"]

STATE_FILE = "clara_fl_server_state.json"


@dataclass(frozen=True)
class ServerRunState:
    """Where a job's rounds stand.

    Attributes:
        job_id: the FLARE job the state belongs to.
        rounds_done: rounds completed and saved; the next round to run has this number.
        total_rounds: the rounds the job planned (its last round is ``total_rounds - 1``).
        global_model: file name of the saved global model, beside this file.
        best_model: file name of the best global model so far, or None when none was chosen yet.
        best_metric: the model selector's value for the best model (negated when the selector negates).
        best_round: the round at which the best model was chosen.
    """

    job_id: str
    rounds_done: int
    total_rounds: int
    global_model: str
    best_model: str | None = None
    best_metric: float | None = None
    best_round: int | None = None

    @property
    def rounds_left(self) -> int:
        return max(0, self.total_rounds - self.rounds_done)


def is_job_id(name: str) -> bool:
    """Whether ``name`` can only name a folder directly in the server's workspace (FLARE's ids are UUIDs)."""
    return bool(name) and name not in (".", "..") and all(c.isalnum() or c in "-_" for c in name)


def write_run_state(folder: str | os.PathLike, state: ServerRunState) -> None:
    """Write ``state`` as ``folder``/:data:`STATE_FILE`, atomically (readers see the old or the new file)."""
    write_json_atomic(os.path.join(folder, STATE_FILE), asdict(state))


def _field(data: dict[str, Any], name: str, kinds: tuple[type, ...], file: str, optional: bool = False) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds) + (" or null" if optional else "")
        raise ConfigError(f"expected {expected}, got {value!r}", file=file, path=name)
    return value


def read_run_state(path: str | os.PathLike) -> ServerRunState:
    """The run state in ``path`` (the state file, or the folder holding it).

    Raises:
        ConfigError: no state file there, not JSON, or a field of the wrong type or out of range.
    """
    path = os.fspath(path)
    file = os.path.join(path, STATE_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ConfigError(f"no server run state ({STATE_FILE}): not a clara-fl server run folder", file=path)
    data = load_json(file, what="server run state")
    if not isinstance(data, dict):
        raise ConfigError("expected a JSON object", file=file)
    state = ServerRunState(
        job_id=_field(data, "job_id", (str,), file),
        rounds_done=_field(data, "rounds_done", (int,), file),
        total_rounds=_field(data, "total_rounds", (int,), file),
        global_model=_field(data, "global_model", (str,), file),
        best_model=_field(data, "best_model", (str,), file, optional=True),
        best_metric=_field(data, "best_metric", (int, float), file, optional=True),
        best_round=_field(data, "best_round", (int,), file, optional=True),
    )
    if not 0 <= state.rounds_done <= state.total_rounds:
        expected = f"expected 0 <= rounds_done <= total_rounds ({state.total_rounds})"
        raise ConfigError(expected, file=file, path="rounds_done")
    if state.best_metric is not None and not math.isfinite(state.best_metric):
        raise ConfigError("expected a finite number", file=file, path="best_metric")
    for name in ("global_model", "best_model"):
        value = getattr(state, name)
        if value is not None and (os.path.basename(value) != value or value in ("", ".", "..")):
            raise ConfigError(f"expected a file name beside the state file, got '{value}'", file=file, path=name)
    return state
