"""The errors users read: a problem in an MMAR's configuration (:class:`ConfigError`), a bad command-line value
(:class:`UsageError`), and the config item behind a run-time failure (:class:`FailureLocation`)."""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "UsageError",
    "FailureLocation",
    "did_you_mean",
    "json_path",
    "describe_failure",
    "located_failure",
    "attach_location",
    "attached_location",
    "causes",
    "root_cause",
]


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


class UsageError(Exception):
    """A bad command-line value: which option, the value given and what was expected.

    ``str(error)`` is the one-line message shown to users, e.g. ``--num-rounds 0: expected a positive integer``
    (the value as it would be typed, quoted where the shell needs it); an option that takes no value, or one whose
    value is not known where the problem is found, reads ``--he: ...``. The command prefixes it with its name and
    exits with status 2, as argparse does for its own usage errors.

    Args:
        option: the option (``--num-rounds``, ``-m``) or positional argument (``job``) as users write it.
        value: the value given; None where the option takes none.
        expected: what was expected or what is wrong with the value.
    """

    def __init__(self, option: str, value: str | None, expected: str) -> None:
        super().__init__(option, value, expected)
        self.option = option
        self.value = value
        self.expected = expected

    def __str__(self) -> str:
        given = self.option if self.value is None else f"{self.option} {shlex.quote(str(self.value))}"
        return f"{given}: {self.expected}"


@dataclass(frozen=True)
class FailureLocation:
    """The config item behind a run-time failure: its config file (as users name it, relative to the MMAR where
    possible), JSON path and class name, and the data item it failed on, when known."""

    file: str | None
    json_path: str
    component: str
    case: str | None = None

    def describe(self, cause: str) -> str:
        """The one line: ``config/config_train.json: train.pre_transforms[3] (RandSpatialCropd) failed on
        case_003.nii.gz: <cause>``."""
        where = ": ".join(p for p in (self.file, f"{self.json_path} ({self.component})") if p)
        on_case = f" on {self.case}" if self.case else ""
        return f"{where} failed{on_case}: {cause}"


# The exception attribute that carries the location a workflow's failure locator found for it
# (clara_fl.workflows.failures.FailureLocator.mark), read wherever the error is reported.
_LOCATION_ATTRIBUTE = "clara_fl_failure_location"


def attach_location(error: BaseException, location: FailureLocation) -> None:
    """Let every report of ``error`` (and of errors raised from it) name ``location``."""
    setattr(error, _LOCATION_ATTRIBUTE, location)


def attached_location(error: BaseException | None) -> FailureLocation | None:
    """The location attached to ``error`` or, failing that, to the nearest of its causes; None if none has one."""
    if error is None:
        return None
    for exception in causes(error):
        location = getattr(exception, _LOCATION_ATTRIBUTE, None)
        if isinstance(location, FailureLocation):
            return location
    return None


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and its causes, outermost first (``__cause__``, else an unsuppressed ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)): ?(.*)$")


def root_cause(error: BaseException) -> tuple[str, str]:
    """The class name and first message line of the innermost cause of ``error``; a data loader worker's failure
    carries its original traceback as text, whose error line is used."""
    innermost = list(causes(error))[-1]
    text = str(innermost).strip()
    if "Original Traceback" in text:
        for line in text.splitlines():
            match = _ERROR_LINE.match(line)
            if match:
                return match.group(1).rsplit(".", 1)[-1], match.group(2)
    return type(innermost).__name__, (text.splitlines() or [""])[0]


def located_failure(error: BaseException) -> str | None:
    """One line naming the config item behind ``error`` and the data item, where a failure locator attached one
    to it or a cause; else None."""
    location = attached_location(error)
    return location.describe(": ".join(root_cause(error))) if location is not None else None


def describe_failure(error: BaseException | None) -> str:
    """The chain of causes, outermost first: ``applying transform X <- ValueError: ROI larger than image``;
    or, where a failure locator attached the config item that failed, one line naming it."""
    located = located_failure(error) if error is not None else None
    if located:
        return located
    parts = []
    while error is not None:
        if isinstance(error, (ConfigError, UsageError)):
            parts.append(str(error))
            break  # its message already says what its cause was; --debug shows the rest of the chain
        parts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return " <- ".join(parts)
