"""Run-time failures named by the config item that failed: file, JSON path, class and data item.

A transform that fails on a case, a handler, a metric or BYOC code raises deep inside MONAI or ignite;
MONAI wraps transform failures as ``RuntimeError("applying transform <...object at 0x7f...>")``. The build of a
config makes one :class:`FailureLocator` for its components (:func:`clara_fl.workflows.build.build_components`),
which finds the innermost of them in a failure and says, in one line::

    config/config_train.json: train.pre_transforms[3] (RandSpatialCropd) failed on case_003.nii.gz: ValueError: ...

A locator knows only the components of its own build. Where a failure leaves the workflow (its build, its
engines' runs) the locator attaches the :class:`~clara_fl.config.errors.FailureLocation` to the exception, so
whoever reports it (the CLI, an FL site) names it without knowing the workflow: :func:`locate` reads it back. A
site sends the FL server the config item, never the case (:mod:`clara_fl.fl.site.failure_report`).

It looks in the traceback's frames: the component is ``self`` of a method that was running, the data item the
``data`` argument of MONAI's ``apply_transform``. A data loader worker process re-raises only the text of its
traceback; its dataset wrapper (:class:`clara_fl.workflows.runtime.LocatingDataset`) carries the locations of the
dataset's transforms into the worker (:class:`CarriedLocations`, pickled with the dataset under any start method),
locates the failure there and writes the location into the exception as a note, which that text carries
(:data:`NOTE`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from clara_fl.config.errors import FailureLocation, attach_location, attached_location, causes, root_cause
from clara_fl.config.resolver import ConfigResolver

__all__ = [
    "FailureLocation",
    "FailureLocator",
    "CarriedLocations",
    "locate",
    "locate_failure",
    "location_note",
    "root_cause",
    "causes",
    "case_name",
]

_CASE_KEYS = ("image", "label", "img", "seg")
WRAPPED = ".args.transform"
#: How a loader worker writes a failure's location into the exception's notes: ``clara-fl failure: {json}``.
NOTE = "clara-fl failure: "
_NOTE_LINE = re.compile(re.escape(NOTE) + r"(\{.*\})\s*$", re.MULTILINE)
# Where transforms hang off a dataset, a Compose and the transform wrappers (LegacyTransform, NumpyEraFallback).
_TRANSFORM_ATTRIBUTES = ("transform", "transforms", "_transform")

Item = tuple[str | None, str, str]  # config file, JSON path, class name


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


class FailureLocator:
    """Names the config item behind a run-time failure, for the components one resolver builds.

    Made before the resolver builds (a component failing while another builds, a dataset caching its cases, is
    named too); it reads the JSON paths the resolver records as it builds (``ConfigResolver.component_paths``).

    Args:
        resolver: the resolver of the workflow's config.
    """

    def __init__(self, resolver: ConfigResolver) -> None:
        self._resolver = resolver

    @property
    def file(self) -> str | None:
        """The config file, as users name it."""
        return self._resolver.file

    def item(self, component: Any) -> Item | None:
        """The config file, JSON path and class name of a built ``component``; None if this build did not build it."""
        paths = self._resolver.component_paths
        known = paths.get(id(component))
        if known is None:
            return None
        path, name = known
        parent = path[: -len(WRAPPED)] if path.endswith(WRAPPED) else None
        if parent and (parent, "LegacyTransform") in paths.values():
            path = parent  # a Clara 4.0 custom transform: users know it by its own place in the config
        return self._resolver.file, path, name

    def locate(self, error: BaseException) -> FailureLocation | None:
        """The innermost component of this build in ``error`` and the data item; None where none is in it."""
        return attached_location(error) or _locate(error, self.item)

    def mark(self, error: BaseException) -> None:
        """Attach the location of ``error`` to it, unless it or a cause has one already (found nearer the failure)."""
        if attached_location(error) is None:
            location = _locate(error, self.item)
            if location is not None:
                attach_location(error, location)

    @contextmanager
    def naming_failures(self) -> Iterator[None]:
        """Mark (:meth:`mark`) every exception leaving the block."""
        try:
            yield
        except BaseException as e:
            self.mark(e)
            raise

    def carried(self, dataset: Any) -> CarriedLocations:
        """The locations of ``dataset``'s transforms (and of the transforms inside them), with the transforms, for a
        wrapper of the dataset to take into loader worker processes."""
        found: dict[int, tuple[Any, Item]] = {}
        pending = [dataset]
        while pending:
            current = pending.pop()
            if id(current) in found:
                continue
            item = self.item(current)
            if item is not None:
                found[id(current)] = (current, item)
            elif current is not dataset:
                continue  # only through components of this config
            for name in _TRANSFORM_ATTRIBUTES:
                part = getattr(current, name, None)
                parts = part if isinstance(part, (list, tuple)) else [part]
                pending += [p for p in parts if p is not None and id(p) not in found]
        return CarriedLocations(list(found.values()))


class CarriedLocations:
    """The locations of some components, held with the components themselves: pickled together with them (a
    dataset's transforms sent to a spawned loader worker), the pairs still match, whatever the objects' addresses.

    Slotted, with no ``__dict__``: MONAI's ``set_rnd``, which seeds a data loader's random transforms by walking
    the dataset's attributes, must not reach the components a second time through here (it would seed them
    differently than the same dataset without its locations).

    Args:
        entries: each component with its config file, JSON path and class name.
    """

    __slots__ = ("_entries", "_by_id")

    def __init__(self, entries: list[tuple[Any, Item]]) -> None:
        self._entries = entries
        self._by_id = {id(component): item for component, item in entries}

    def __getstate__(self) -> dict[str, Any]:
        return {"entries": self._entries}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["entries"])  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self._entries)

    def item(self, component: Any) -> Item | None:
        """The config file, JSON path and class name of ``component``; None if it is not one of these."""
        return self._by_id.get(id(component))

    def locate(self, error: BaseException) -> FailureLocation | None:
        """The innermost of these components in ``error`` and the data item; None where none is in it."""
        return _locate(error, self.item)


def location_note(item: Item | None, case: str | None) -> str:
    """The exception note that carries a failure's config item and case across a process boundary as text
    (:data:`NOTE`); either may be unknown."""
    file, path, component = item if item is not None else (None, None, None)
    return NOTE + json.dumps({"file": file, "json_path": path, "component": component, "case": case})


def locate(error: BaseException) -> FailureLocation | None:
    """The location a workflow's :class:`FailureLocator` attached to ``error`` or a cause; None if none did."""
    return attached_location(error)


def locate_failure(error: BaseException) -> str | None:
    """One line naming the config item behind ``error`` and the data item, or None where none is known."""
    location = locate(error)
    return location.describe(": ".join(root_cause(error))) if location is not None else None


def _frames(traceback: TracebackType | None) -> Iterator[Any]:
    while traceback is not None:
        yield traceback.tb_frame
        traceback = traceback.tb_next


def _locate(error: BaseException, item_of: Callable[[Any], Item | None]) -> FailureLocation | None:
    """The innermost component ``item_of`` knows in the frames of ``error``'s chain, or the one a loader worker
    noted; the data item from MONAI's ``apply_transform`` frames or the worker's note."""
    chain = list(causes(error))
    found: Item | None = None
    case: str | None = None
    for exception in chain:  # outermost first; frames run from the catch point inwards
        for frame in _frames(exception.__traceback__):
            owner = frame.f_locals.get("self")
            known = item_of(owner) if owner is not None else None
            if known is not None and not (found and known[2] == "Compose" and found[2] != "Compose"):
                found = known
            data = frame.f_locals.get("data") if frame.f_code.co_name == "apply_transform" else None
            case = case_name(data) or case
    noted, noted_case = _noted(chain)
    if noted is not None:  # from inside the loader worker: nearer the failure than any frame here
        found = noted
    if found is None:
        return None
    return FailureLocation(*found, noted_case or case)


def _noted(chain: list[BaseException]) -> tuple[Item | None, str | None]:
    """The config item and the case a loader worker wrote into a note (:data:`NOTE`), each None where not known."""
    for exception in chain:
        for text in [*getattr(exception, "__notes__", []), str(exception)]:
            for match in _NOTE_LINE.finditer(str(text)):
                try:
                    fields = json.loads(match.group(1))
                except ValueError:
                    continue
                if not isinstance(fields, dict):
                    continue
                file, path, component, case = (
                    value if isinstance(value, str) and value else None
                    for value in (fields.get(k) for k in ("file", "json_path", "component", "case"))
                )
                item = (file, path, component) if path and component else None
                return item, case
    return None, None
