"""One FL round of local training on a built trainer: the single definition both FL paths use.

The in-process Learner (``fl/site/learner.py``) and the torchrun site worker (``fl/site/worker.py``)
both train a round through :meth:`RoundRunner.run`, so the two cannot diverge.

A round is either ``local_epochs`` whole epochs or ``steps`` iterations. How a steps round ends
(ignite ``interrupt()``, never ``terminate()``: terminate skips EPOCH_COMPLETED and fires
COMPLETED, i.e. it would run the final-checkpoint handlers every round):

- the last step falls on an epoch boundary: the epoch's EPOCH_COMPLETED handlers (validation,
  key-metric checkpoint, metrics logging) all run, then the round stops. COMPLETED does not fire.
- the last step falls inside an epoch: the round stops right after that iteration's
  ITERATION_COMPLETED handlers; no epoch-level handler runs now. The next round continues the same
  epoch from the next batch, and its EPOCH_COMPLETED handlers run when that epoch ends, once.

An abort (``should_abort()`` true, polled after every trainer and evaluator iteration) stops
after the iteration in progress with ``terminate()``; the interrupted epoch is discarded: the
trainer's progress goes back to the last finished epoch, so the next round starts a fresh epoch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["RoundSpec", "RoundResult", "RoundRunner"]


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RoundSpec:
    """What one round trains: ``steps`` iterations when > 0, else ``local_epochs`` epochs.

    Raises:
        ValueError: neither is at least 1.
    """

    local_epochs: int = 1
    steps: int = 0

    def __post_init__(self) -> None:
        if self.local_epochs < 1 and self.steps < 1:
            raise ValueError("local_epochs or steps_aggregation must be at least 1")

    def describe(self) -> str:
        return f"{self.steps} iterations" if self.steps > 0 else f"{self.local_epochs} epoch(s)"


@dataclass(frozen=True)
class RoundResult:
    """What a round did: ``steps`` iterations run by this process (``state.iteration`` - start).

    ``epoch`` and ``iteration`` are the trainer's progress afterwards (after the rewind, when aborted).
    """

    steps: int
    aborted: bool
    epoch: int
    iteration: int


class RoundRunner:
    """Trains rounds on ``trainer``; attach it once, right after the workflow is built.

    Its handlers are attached at construction so that they run before handlers added later (a
    metrics streamer, a test's probe), and stay inert outside :meth:`run`.

    Args:
        trainer: the MONAI/ignite trainer.
        evaluator: the evaluator the trainer's ValidationHandler runs; polled for abort too.
    """

    def __init__(self, trainer: Engine, evaluator: Engine | None = None) -> None:
        from ignite.engine import Events

        self.trainer = trainer
        self.evaluator = evaluator
        self._should_abort: Callable[[], bool] | None = None
        self._aborted = False
        self._stop_at_step: int | None = None  # absolute trainer iteration at which a steps round ends
        self._stop_after_epoch = False
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._after_iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._after_epoch)
        if evaluator is not None:
            evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._after_iteration)

    def epoch_length(self) -> int:
        loader: Any = (
            getattr(self.trainer, "data_loader", None) or self.trainer.state.dataloader
        )  # MONAI's, else ignite's
        return int(self.trainer.state.epoch_length or len(loader))

    def run(self, spec: RoundSpec, should_abort: Callable[[], bool] = _never) -> RoundResult:
        """Train one round as ``spec`` says (see the module docstring for how it stops).

        Args:
            spec: epochs or steps of this round.
            should_abort: polled after every iteration; True stops the round and discards its epoch.

        Raises:
            Exception: whatever the trainer raised (the site's data or code failed).
        """
        trainer = self.trainer
        start = int(trainer.state.iteration)
        epoch_length = self.epoch_length()
        if spec.steps > 0:
            self._stop_at_step = start + spec.steps
            extra_epochs = -(-spec.steps // epoch_length) + 1  # a bound only: the step count stops the round
        else:
            self._stop_at_step = None
            extra_epochs = spec.local_epochs
        trainer.state.max_epochs = int(trainer.state.epoch) + extra_epochs
        self._stop_after_epoch = False
        try:
            with self.abort_polling(should_abort):
                trainer.run()
        finally:
            self._stop_at_step, self._stop_after_epoch = None, False
        steps = int(trainer.state.iteration) - start
        aborted = self._aborted or should_abort()
        if aborted:
            self.rewind_to_epoch_boundary()
        return RoundResult(
            steps=steps, aborted=aborted, epoch=int(trainer.state.epoch), iteration=int(trainer.state.iteration)
        )

    @contextlib.contextmanager
    def abort_polling(self, should_abort: Callable[[], bool]) -> Iterator[None]:
        """Poll ``should_abort`` after every trainer and evaluator iteration while inside (a round, a validation)."""
        self._should_abort, self._aborted = should_abort, False
        try:
            yield
        finally:
            self._should_abort = None

    def rewind_to_epoch_boundary(self) -> None:
        """Drop the epoch in progress: the next round starts a fresh epoch, not the rest of this one."""
        state = self.trainer.state
        epoch_length = self.epoch_length()
        state.epoch = state.iteration // epoch_length
        state.iteration = state.epoch * epoch_length

    def _after_iteration(self, engine: Any) -> None:
        if self._should_abort is None:
            return
        if self._should_abort():
            self._aborted = True
            engine.terminate()  # the interrupted epoch is discarded (rewind_to_epoch_boundary)
            return
        if engine is self.trainer and self._stop_at_step is not None and engine.state.iteration >= self._stop_at_step:
            self._stop_at_step = None
            if engine.state.iteration % self.epoch_length():
                engine.interrupt()  # mid-epoch: the next round resumes this epoch where it stopped
            else:
                self._stop_after_epoch = True  # let the epoch's handlers (validation, checkpoints) run first

    def _after_epoch(self, engine: Any) -> None:
        if self._stop_after_epoch:
            self._stop_after_epoch = False
            engine.interrupt()
