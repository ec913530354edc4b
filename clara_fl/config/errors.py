"""One error type for every problem found in an MMAR's configuration."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

__all__ = ["ConfigError", "did_you_mean", "json_path", "describe_failure", "located_failure", "FAILURE_LOCATORS"]


def json_path(*parts: str | int) -> str:
    """Join path parts the way users read them: ``train.handlers[3].args.load_path``."""
    text = ""
    for part in parts:
        if part == "" or part is None:
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text = f"{text}.{part}" if text else str(part)
    return text


def did_you_mean(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    """A `` (did you mean 'x'?)`` suffix for the closest candidate, or an empty string."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in candidates}
        if word.lower() in lowered:
            matches = [lowered[word.lower()]]
    return f" (did you mean '{prefix}{matches[0]}'?)" if matches else ""


class ConfigError(Exception):
    """A configuration problem: which file, where in it (a JSON path) and what was expected.

    ``str(error)`` is the one-line message shown to users, e.g.
    ``config/config_train.json: train.optimizer.args.params: unknown reference '@modle' (did you mean '@model'?)``.
    ``component`` is the class name of the component at ``path`` when one failed to build (``CacheDataset``).
    """

    def __init__(
        self, message: str, file: str | None = None, path: str | None = None, component: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.path = path
        self.component = component

    def located(self, file: str | None = None, path: str | None = None) -> ConfigError:
        """Fill in the file and path where they are not known yet (innermost location wins)."""
        if self.file is None and file is not None:
            self.file = file
        if self.path is None and path:
            self.path = path
        return self

    def __str__(self) -> str:
        where = ": ".join(str(p) for p in (self.file, self.path) if p)
        return f"{where}: {self.message}" if where else self.message


# Callables that name the config item behind a run-time failure (registered by clara_fl.workflows.failures,
# so every catch site that calls describe_failure gets them without this package importing upward).
FAILURE_LOCATORS: list[Callable[[BaseException], str | None]] = []


def located_failure(error: BaseException) -> str | None:
    """The line of the first registered locator that knows the config item behind ``error``, else None."""
    for locate in FAILURE_LOCATORS:
        located = locate(error)
        if located:
            return located
    return None


def describe_failure(error: BaseException | None) -> str:
    """The chain of causes, outermost first: ``applying transform X <- ValueError: ROI larger than image``;
    or, where a registered locator knows the config item that failed, one line naming it."""
    located = located_failure(error) if error is not None else None
    if located:
        return located
    parts = []
    while error is not None:
        if isinstance(error, ConfigError):
            parts.append(str(error))
            break  # its message already says what its cause was; --debug shows the rest of the chain
        parts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return " <- ".join(parts)
