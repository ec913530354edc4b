"""A site's training state between FL rounds: ``models/fl_local_state.pt``, written in the background.

The file always holds the state after the last round the site accepted (network, optimizer
moments, scheduler, epoch, best metric). A learner that FLARE builds anew for the next task
(simulator ``-t 1``, a restarted client) resumes from it, and a refused round (NaN/Inf weights)
rolls back to it, so no second copy of the state is kept in memory. Writing it costs about as much
as a short round's bookkeeping, so it is written on a thread while the site sends its update; what the
thread writes is a snapshot taken on the caller's thread, so the network may change while it writes.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from typing import IO, Any

from clara_fl.fl.site.local_algorithm import LocalAlgorithm

__all__ = ["ALGORITHM_STATE_KEY", "LocalState", "LOCAL_STATE_FILE"]

LOCAL_STATE_FILE = "fl_local_state.pt"
ALGORITHM_STATE_KEY = "fl_algorithm"  # the site's LocalAlgorithm state, beside the workflow's

logger = logging.getLogger(__name__)


class LocalState:
    """Save, restore and roll back a :class:`~clara_fl.workflows.train.TrainWorkflow`'s state at ``path``."""

    def __init__(self, workflow: Any, path: str, algorithm: LocalAlgorithm | None = None) -> None:
        self.workflow = workflow
        self.path = path
        self.algorithm = algorithm or LocalAlgorithm()
        self._writer: threading.Thread | None = None
        self._write_error: BaseException | None = None

    def restore(self) -> bool:
        """Load the saved state into the workflow; False when there is none yet."""
        self.wait()
        state = self.workflow.load_training_state(self.path)
        if state is None:
            return False
        self.algorithm.load_state_dict(state.get(ALGORITHM_STATE_KEY, {}))
        return True

    def save(self) -> None:
        """Snapshot the state now and write it atomically on a background thread.

        The snapshot is the serialized file in one buffer (``torch.save`` into memory), not a copy
        of every tensor: one large allocation that goes back to the operating system when the
        write ends, where per-tensor copies each round fragment the site process's heap. The
        network and optimizer may change as soon as this returns.
        """
        import torch

        self.wait()
        state = self.workflow.training_state()
        state[ALGORITHM_STATE_KEY] = self.algorithm.state_dict()
        snapshot = io.BytesIO()
        torch.save(state, snapshot)
        del state
        self._writer = threading.Thread(target=self._write, args=(snapshot,), name="clara-fl-local-state", daemon=True)
        self._writer.start()

    def adopt(self, written_elsewhere: str) -> None:
        """Make a state file written by another process (the site's DDP workers) the saved state."""
        self.wait()
        os.replace(written_elsewhere, self.path)

    def roll_back(self) -> None:
        """Return the workflow to the saved state: the last accepted round, or the state it was built with."""
        if not self.restore():
            raise RuntimeError(f"no saved state to roll back to at {self.path}")

    def wait(self) -> None:
        """Wait for a pending write; a failed write is logged (the in-memory state is still good)."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._write_error is not None:
            error, self._write_error = self._write_error, None
            logger.error("could not write %s (%s): a rebuilt learner resumes from an older state", self.path, error)

    def _write(self, snapshot: io.BytesIO) -> None:
        from clara_fl.runtime.files import atomic_write

        def write(f: IO[bytes]) -> None:
            with snapshot.getbuffer() as view:
                f.write(view)

        try:
            atomic_write(self.path, write)
        except Exception as e:  # reported by wait(), on the learner's thread
            self._write_error = e
        finally:
            snapshot.close()
