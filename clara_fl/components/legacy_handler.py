"""BYOC event handlers written for MONAI 0.5, run on today's engines (Clara 4.0 configs only).

MONAI 0.5 engines did not decollate: ``engine.state.output`` was one dict of batched tensors
(``{"image": B x ..., "pred": B x ..., "loss": scalar}``). Today it is a list with one dict per
sample. A Clara 4.0 config's custom handlers are wrapped in :class:`LegacyHandler` (by
``clara_fl.config.clara40``): every callback the handler registers sees a batched output while it
runs, and the engine's own output is put back right after.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["LegacyHandler", "batched_output"]

SCALAR_KEYS = ("loss",)  # one value per batch, repeated in every decollated item


def _collate(items: list[Any]) -> Any:
    import torch

    if not items or not all(isinstance(item, dict) for item in items):
        return items
    batched: dict[str, Any] = {}
    for key in items[0]:
        values = [item.get(key) for item in items]
        if key in SCALAR_KEYS:
            batched[key] = values[0]
        elif all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            batched[key] = torch.stack(values)
        else:
            batched[key] = values
    return batched


@contextlib.contextmanager
def batched_output(engine: Any) -> Iterator[None]:
    """``engine.state.output`` as MONAI 0.5 made it (one dict of batched values) for the duration."""
    state: Any = getattr(engine, "state", None)
    output = getattr(state, "output", None)
    if state is None or not isinstance(output, list):
        yield
        return
    state.output = _collate(output)
    try:
        yield
    finally:
        state.output = output


def _takes_engine(handler: Callable, args: tuple, kwargs: dict) -> bool:
    """Ignite passes the engine first when the handler's signature takes it (ignite's own rule)."""
    try:
        inspect.signature(handler).bind(None, *args, **kwargs)
    except TypeError:
        return False
    return True


class _BatchedOutputEngine:
    """The engine as a legacy handler sees it when attaching: its callbacks run under :func:`batched_output`."""

    def __init__(self, engine: Any) -> None:
        object.__setattr__(self, "_engine", engine)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._engine, name, value)

    def add_event_handler(self, event: Any, handler: Callable, *args: Any, **kwargs: Any) -> Any:
        engine = self._engine
        with_engine = _takes_engine(handler, args, kwargs)

        def run_batched(*_: Any) -> Any:
            with batched_output(engine):
                return handler(engine, *args, **kwargs) if with_engine else handler(*args, **kwargs)

        return engine.add_event_handler(event, run_batched)


class LegacyHandler:
    """Attach ``handler`` (a MONAI 0.5-era BYOC handler) so that its callbacks see batched engine output.

    Args:
        handler: the custom handler; anything with ``attach(engine)``.
    """

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def __repr__(self) -> str:
        return f"LegacyHandler({self.handler!r})"

    def attach(self, engine: Any) -> None:
        self.handler.attach(_BatchedOutputEngine(engine))
