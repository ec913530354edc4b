"""A site's failure as two texts: the full story for the site's own log, and what may leave the site.

Nothing identifying leaves a site. Case file names in hospitals often carry patient or accession numbers, and
data paths name the hospital's archives, so the text a site sends the FL server with a failed task (FLARE's
``__error__`` reply header) is built only from parts that a job authored or that are fixed words:

* ``stage``, what the site was doing (``train``, ``validate``, ``cross_validate``, ...), a fixed word;
* ``kind``, the error's kind: the exception's class name, or a fixed word for clara-fl's own refusals
  (``non_finite_weights``, ``bad_task_data``, ...);
* ``config_file``, the MMAR config file relative to the MMAR root (``config/config_train.json``): a ``.json``
  path inside the MMAR, never absolute, never with ``..``;
* ``json_path`` (``train.pre_transforms[3]``) and ``component`` (``RandCropByPosNegLabeld``), the config item
  that failed: strings from the job's config.

``detail`` is the full line (with the case, the paths and the exception's message); it stays in the site's log
(:meth:`SiteFailure.local_text`) and goes to the server only where the site opted in (``"send_error_details":
true`` in its ``clara_fl_site.json``). For example, the public text::

    local training failed: ValueError at config/config_train.json: train.pre_transforms[3] (RandCropByPosNegLabeld)

and the site's log line::

    local training failed: config/config_train.json: train.pre_transforms[3] (RandCropByPosNegLabeld) failed on
    case_003.nii.gz: ValueError: ...

A :class:`SiteFailure` is checked when it is made, whichever way (:meth:`~SiteFailure.from_exception`,
:meth:`~SiteFailure.refusal`, :meth:`~SiteFailure.from_record` or the constructor): a part that could carry
anything but a job-authored name is refused there, so :meth:`~SiteFailure.public_text` can only say what the
rules above allow. :meth:`~SiteFailure.to_record` and :meth:`~SiteFailure.from_record` carry it across a process
boundary as JSON.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["SiteFailure", "STAGE_LABELS", "one_line"]

#: How each stage reads at the head of a failure line; other stages read ``<stage> failed``.
STAGE_LABELS = {
    "build": "cannot build this site's trainer",
    "before_round": "preparing local training failed",
    "train": "local training failed",
    "after_round": "finishing local training failed",
    "validate": "local validation failed",
    "cross_validate": "cross-site validation failed",
    "submit_model": "submitting the local model failed",
}

_STAGE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_KIND = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
# relative, no "..", no hidden names, no absolute root: name segments joined by "/" or "."
_CONFIG_FILE = re.compile(r"[A-Za-z0-9_-]+(?:[./][A-Za-z0-9_-]+)*\.json")
_JSON_PATH = re.compile(r"[A-Za-z0-9_\-.\[\]]{1,200}")
_COMPONENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,99}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """``text`` on one line: control characters and runs of whitespace become single spaces."""
    return " ".join(_CONTROL.sub(" ", text).split())


@dataclass(frozen=True)
class SiteFailure:
    """Why a site failed a task, in parts that say which may leave the site (see the module's docstring).

    Args:
        stage: what the site was doing, a lower-case word (``build``, ``train``, ``validate``,
            ``cross_validate``, ``submit_model``, ...; :data:`STAGE_LABELS`).
        kind: the exception's class name (``ConfigError``, ``RuntimeError``) or a fixed word for a refusal
            (``non_finite_weights``).
        config_file: the MMAR config file that holds the failed item, relative to the MMAR root; or None.
        json_path: the failed config item's JSON path (``train.pre_transforms[3]``); or None.
        component: the failed config item's class name (``RandCropByPosNegLabeld``); or None.
        detail: the full line for the site's log; free text, sent only where the site opts in.

    Raises:
        ValueError: a part is not a string (``None`` where allowed), or is one that could carry more than a
            job-authored name: a config file that is absolute, has ``..`` or is no ``.json`` file, a JSON path or
            class name with characters no config uses, a stage or kind that is no plain word.
    """

    stage: str
    kind: str
    config_file: str | None
    json_path: str | None
    component: str | None
    detail: str

    def __post_init__(self) -> None:
        for part, pattern, optional in (
            ("stage", _STAGE, False),
            ("kind", _KIND, False),
            ("config_file", _CONFIG_FILE, True),
            ("json_path", _JSON_PATH, True),
            ("component", _COMPONENT, True),
        ):
            value = getattr(self, part)
            if value is None and optional:
                continue
            if not isinstance(value, str):
                raise ValueError(f"SiteFailure.{part} must be a string, got {type(value).__name__}")
            if not pattern.fullmatch(value):
                raise ValueError(f"SiteFailure.{part} is not one that may leave a site: {value!r}")
        if not isinstance(self.detail, str):
            raise ValueError(f"SiteFailure.detail must be a string, got {type(self.detail).__name__}")

    # -- making one ------------------------------------------------------------------------------

    @classmethod
    def from_exception(cls, stage: str, error: BaseException, mmar_root: str | os.PathLike | None) -> SiteFailure:
        """The failure ``error`` caused while the site was at ``stage``.

        The config item comes from the run-time failure locator (:func:`clara_fl.workflows.failures.locate`)
        where a built component failed, else from a :class:`~clara_fl.config.errors.ConfigError` in the error's
        chain (its ``file``, ``path`` and ``component``). ``kind`` is ``ConfigError`` for a config error the
        locator does not place, else the class name of the innermost cause (``FileNotFoundError``, not MONAI's
        ``RuntimeError`` around it). The config file is kept only as a ``.json`` file inside ``mmar_root``, made
        relative to it; a file elsewhere (a datalist, the site file) is dropped, and with it a JSON path that
        points into that file. Any other part that may not leave the site is dropped too. ``detail`` is
        :func:`~clara_fl.config.errors.describe_failure`'s full line.

        Args:
            stage: what the site was doing (see :class:`SiteFailure`).
            error: the exception.
            mmar_root: the MMAR's root folder at the site (the job's app folder); None when unknown, which keeps
                only a config file named relative to it.

        Raises:
            ValueError: ``stage`` is not a lower-case word.
        """
        from clara_fl.config.errors import ConfigError, describe_failure
        from clara_fl.workflows.failures import causes, locate, root_cause

        location = locate(error)
        config_error = next((e for e in causes(error) if isinstance(e, ConfigError)), None)
        file: str | None = None
        json_path: str | None = None
        component: str | None = None
        kind = root_cause(error)[0]
        if location is not None:
            file, json_path, component = location.file, location.json_path, location.component
        elif config_error is not None:
            kind = "ConfigError"
            file, json_path, component = config_error.file, config_error.path, config_error.component
        config_file = _config_file_in_mmar(file, mmar_root)
        if file is not None and config_file is None:
            json_path = None  # a path into a file the server may not know of (a datalist's items)
        return cls(
            stage=stage,
            kind=kind if _KIND.fullmatch(kind) else _kind_of(error),
            config_file=config_file,
            json_path=json_path if json_path and _JSON_PATH.fullmatch(json_path) else None,
            component=component if component and _COMPONENT.fullmatch(component) else None,
            detail=describe_failure(error),
        )

    @classmethod
    def refusal(cls, stage: str, kind: str, detail: str) -> SiteFailure:
        """clara-fl's own refusal at ``stage``, no exception: ``kind`` is a fixed word (``non_finite_weights``,
        ``bad_task_data``), ``detail`` the full line for the site's log.

        Raises:
            ValueError: ``stage`` or ``kind`` is not a plain word.
        """
        return cls(stage=stage, kind=kind, config_file=None, json_path=None, component=None, detail=detail)

    # -- across a process boundary ---------------------------------------------------------------

    def to_record(self) -> dict[str, str | None]:
        """The failure as a JSON-able dict of its parts (read back by :meth:`from_record`)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SiteFailure:
        """The failure a :meth:`to_record` dict describes.

        Raises:
            ValueError: ``record`` is no mapping, lacks ``stage``, ``kind`` or ``detail``, has a key
                :class:`SiteFailure` does not know, or a part :class:`SiteFailure` refuses (a non-string, a path
                that may not leave the site).
        """
        if not isinstance(record, Mapping):
            raise ValueError(f"a SiteFailure record must be a mapping, got {type(record).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in record if k not in names)
        if unknown:
            raise ValueError(f"a SiteFailure record has unknown keys: {', '.join(unknown)}")
        missing = [k for k in ("stage", "kind", "detail") if k not in record]
        if missing:
            raise ValueError(f"a SiteFailure record lacks: {', '.join(missing)}")
        parts: dict[str, Any] = {name: record.get(name) for name in names}
        return cls(**parts)

    # -- the two texts ---------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """The stage as the head of a line: ``local training failed``."""
        return STAGE_LABELS.get(self.stage, f"{self.stage.replace('_', ' ')} failed")

    def public_text(self, send_details: bool = False) -> str:
        """What the site sends the server: ``<label>: <kind>[ at <config file>: <JSON path> (<component>)]``.

        Never the exception's message, a case or a path outside the MMAR, unless ``send_details`` (the site
        opted in with ``"send_error_details": true``) appends ``; detail: <detail>`` on one line.
        """
        item = " ".join(p for p in (self.json_path, f"({self.component})" if self.component else None) if p)
        where = ": ".join(p for p in (self.config_file, item) if p)
        text = f"{self.label}: {self.kind}" + (f" at {where}" if where else "")
        return f"{text}; detail: {one_line(self.detail)}" if send_details else text

    def local_text(self) -> str:
        """What the site logs: ``<label>: <detail>``, the full line."""
        return f"{self.label}: {self.detail}"


def _kind_of(error: BaseException) -> str:
    """The nearest class of ``error`` whose name is a plain identifier."""
    for klass in type(error).__mro__:
        if _KIND.fullmatch(klass.__name__):
            return klass.__name__
    return "Exception"


def _config_file_in_mmar(file: str | None, mmar_root: str | os.PathLike | None) -> str | None:
    """``file`` relative to ``mmar_root`` with "/" separators when it is a ``.json`` file inside it, else None."""
    if not file:
        return None
    if os.path.isabs(file):
        if mmar_root is None:
            return None
        relative = os.path.relpath(os.path.normpath(file), os.path.abspath(mmar_root))
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            return None
        file = relative
    file = file.replace(os.sep, "/")
    return file if _CONFIG_FILE.fullmatch(file) else None
