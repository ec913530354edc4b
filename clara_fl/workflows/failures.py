"""Run-time failures named by the config item that failed: file, JSON path, class and data item.

A transform that fails on a case, a handler, a metric or BYOC code raises deep inside MONAI or ignite;
MONAI wraps transform failures as ``RuntimeError("applying transform <...object at 0x7f...>")``. Each
built component's JSON path is recorded by the resolver (``ConfigResolver.component_paths``, keyed by
``id``); this module finds the innermost component in the failure and says, in one line::

    config/config_train.json: train.pre_transforms[3] (RandSpatialCropd) failed on case_003.nii.gz: ValueError: ...

:func:`locate` gives the same as a :class:`FailureLocation` (file, JSON path, class, case) for callers that
must tell the parts apart: a site sends the FL server the config item, never the case
(:mod:`clara_fl.fl.site.failure_report`).

It looks in the traceback's frames (the component is ``self`` of a method that was running; the data
item is the ``data`` argument of MONAI's ``apply_transform``) and, for failures re-raised from a data
loader worker process (no frames), in the ``at 0x...`` object addresses in the messages.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from clara_fl.config import errors
from clara_fl.config.resolver import ConfigResolver

__all__ = ["FailureLocation", "register", "locate", "locate_failure", "root_cause", "causes", "case_name"]

_ADDRESS = re.compile(r" at 0x([0-9a-fA-F]+)>")
_CASE_KEYS = ("image", "label", "img", "seg")
WRAPPED = ".args.transform"
_resolvers: list[weakref.ReferenceType[ConfigResolver]] = []


def register(resolver: ConfigResolver) -> None:
    """Let failures while running ``resolver``'s components be described by their config items."""
    _resolvers[:] = [r for r in _resolvers if r() is not None]
    _resolvers.append(weakref.ref(resolver))
    if locate_failure not in errors.FAILURE_LOCATORS:
        errors.FAILURE_LOCATORS.append(locate_failure)


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and its causes, outermost first (``__cause__``, else an unsuppressed ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _frames(traceback: TracebackType | None) -> Iterator[Any]:
    while traceback is not None:
        yield traceback.tb_frame
        traceback = traceback.tb_next


def case_name(data: Any) -> str | None:
    """The file a data item came from: its image's MetaTensor filename, or the image path string."""
    if isinstance(data, (list, tuple)) and data:
        data = data[0]
    if not isinstance(data, Mapping):
        return None
    for key in [k for k in _CASE_KEYS if k in data] + [k for k in data if k not in _CASE_KEYS]:
        value = data[key]
        meta = getattr(value, "meta", None)
        name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
        if name is None and isinstance(value, str) and os.path.splitext(value)[1]:
            name = value
        if isinstance(name, str) and name:
            return os.path.basename(name)
    return None


def _lookup(object_id: int) -> tuple[str | None, str, str] | None:
    for ref in _resolvers:
        resolver = ref()
        if resolver is not None and object_id in resolver.component_paths:
            path, name = resolver.component_paths[object_id]
            parent = path[: -len(WRAPPED)] if path.endswith(WRAPPED) else None
            if parent and (parent, "LegacyTransform") in resolver.component_paths.values():
                path = parent  # a Clara 4.0 custom transform: users know it by its own place in the config
            return resolver.file, path, name
    return None


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


def locate(error: BaseException) -> FailureLocation | None:
    """The innermost config component in ``error`` and the data item, or None if no registered config knows it."""
    chain = list(causes(error))
    found: tuple[str | None, str, str] | None = None
    case: str | None = None
    for exception in chain:  # outermost first; frames run from the catch point inwards
        for frame in _frames(exception.__traceback__):
            owner = frame.f_locals.get("self")
            known = _lookup(id(owner)) if owner is not None else None
            if known is not None and not (found and known[2] == "Compose" and found[2] != "Compose"):
                found = known
            data = frame.f_locals.get("data") if frame.f_code.co_name == "apply_transform" else None
            case = case_name(data) or case
    named = None
    for (
        exception
    ) in chain:  # "applying transform <X at 0x..>"; from a data loader worker this is only text (fork: same addresses)
        for address in _ADDRESS.findall(str(exception)):
            known = _lookup(int(address, 16))
            if known is not None and (named is None or known[2] != "Compose"):
                named = known
    if named is not None and (found is None or found[2] == "Compose" or named[2] != "Compose"):
        found = named
    if found is None:
        return None
    file, path, name = found
    return FailureLocation(file, path, name, case or _noted_case(chain))


def locate_failure(error: BaseException) -> str | None:
    """One line naming the innermost config component in ``error`` and the data item, or None if none is known."""
    location = locate(error)
    return location.describe(": ".join(root_cause(error))) if location is not None else None


_CASE_NOTE = re.compile(r"clara-fl case: (\S+)")


def _noted_case(chain: list[BaseException]) -> str | None:
    """The case a loader worker named in its exception note (clara_fl.workflows.runtime.CaseNamingDataset)."""
    for exception in chain:
        texts = [str(exception), *getattr(exception, "__notes__", [])]
        for text in texts:
            match = _CASE_NOTE.search(text)
            if match:
                return match.group(1)
    return None


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
