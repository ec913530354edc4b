"""Signatures of components that extend a library class and pass ``**kwargs`` on to it.

The config engine checks arguments against a component's signature; a wrapper's ``**kwargs``
would hide the library class's own parameters, so each wrapper publishes the merged signature.
"""

from __future__ import annotations

import inspect
from typing import TypeVar

__all__ = ["with_base_signature"]

T = TypeVar("T", bound=type)


def with_base_signature(cls: T) -> T:
    """Class decorator: ``cls.__signature__`` = its own parameters, then its base class's, without ``**kwargs``."""
    own = inspect.signature(cls)
    base = inspect.signature(cls.__mro__[1])
    params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
    names = {p.name for p in params}
    extra = [p for p in base.parameters.values() if p.name not in names and p.kind is not p.VAR_KEYWORD]
    keyword_only = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in extra if p.kind is not p.VAR_POSITIONAL]
    cls.__signature__ = own.replace(parameters=params + keyword_only)  # type: ignore[attr-defined]
    return cls
