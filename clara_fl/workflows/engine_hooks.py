"""Small interventions on built MONAI engines that FL needs and standalone does not."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["detach_checkpoint_loaders", "handlers_muted"]


def detach_checkpoint_loaders(engine: Any, handlers: Iterable[Any]) -> list[str]:
    """Stop CheckpointLoaders from firing: in FL the weights come from the server, not a local file.

    Returns the load paths that were detached (for the log).
    """
    from ignite.engine import Events
    from monai.handlers import CheckpointLoader

    detached = []
    for handler in handlers or []:
        if isinstance(handler, CheckpointLoader) and engine.has_event_handler(handler, Events.STARTED):
            engine.remove_event_handler(handler, Events.STARTED)
            detached.append(str(handler.load_path))
    return detached


@contextlib.contextmanager
def handlers_muted(engine: Any, kinds: tuple[type, ...]) -> Iterator[None]:
    """Detach the handlers of the given kinds for the duration, then restore every handler in order.

    ignite has no public way to list an engine's handlers (see ``clara_fl.runtime.private_api``).
    """
    from clara_fl.runtime.private_api import event_handler_lists

    handlers = event_handler_lists(engine)
    saved = {event: list(entries) for event, entries in handlers.items()}
    for entries in handlers.values():
        entries[:] = [e for e in entries if not isinstance(getattr(e[0], "__self__", None), kinds)]
    try:
        yield
    finally:
        for event, entries in saved.items():
            handlers[event][:] = entries
