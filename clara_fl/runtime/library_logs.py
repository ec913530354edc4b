"""ignite's and MONAI's reports of an exception go to the DEBUG level, without their traceback unless debug is on.

A transform or handler that fails inside an engine is reported several times by the libraries before clara-fl
names the config item and the case in one line: ignite's engines log "Engine run is terminating due to exception"
at ERROR, and MONAI's StatsHandler logs the exception with its whole traceback. Without ``--debug`` (and always at an
FL site) those reports are lowered to DEBUG and lose their traceback: shown only where DEBUG logging was asked for,
as one line.

The reports are recognised by where they come from (a logger under ``ignite`` or ``monai``, or code in those
packages: MONAI logs under class names too) and by what they are: a record that carries an exception, or an ERROR
logged while an exception is being handled. MONAI's loggers do not propagate to the root logger and write to
handlers of their own, which exist only once the library has built its engines and handlers; so the filter sits
on each library logger that logs, put there by a log record factory the first time that logger makes a record.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any

__all__ = ["LibraryExceptionFilter", "quiet_library_exceptions", "LIBRARIES"]

LIBRARIES = ("ignite", "monai")


class LibraryExceptionFilter(logging.Filter):
    """Lowers a library's report of an exception to DEBUG and, unless ``debug``, drops its traceback; a record
    lowered below what its logger is enabled for is not emitted. Every other record passes unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.debug = False
        self.active = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.active or self.debug or not (_from_library(record) and _reports_an_exception(record)):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_FILTER = LibraryExceptionFilter()
_library_folders: tuple[str, ...] | None = None


def _folders() -> tuple[str, ...]:
    global _library_folders
    if _library_folders is None:
        found: list[str] = []
        for name in LIBRARIES:
            spec = importlib.util.find_spec(name)  # the package's folder, without importing it
            found += [os.path.join(folder, "") for folder in (spec.submodule_search_locations or [])] if spec else []
        _library_folders = tuple(found)
    return _library_folders


def _from_library(record: logging.LogRecord) -> bool:
    """Whether ignite or MONAI made ``record``: its logger is theirs, or its code is in their packages."""
    return record.name.split(".", 1)[0] in LIBRARIES or record.pathname.startswith(_folders())


def _reports_an_exception(record: logging.LogRecord) -> bool:
    """A record with an exception's traceback, or an ERROR logged while an exception is being handled."""
    return bool(record.exc_info) or (record.levelno >= logging.ERROR and sys.exc_info()[1] is not None)


def quiet_library_exceptions(debug: bool) -> None:
    """From now on in this process, ignite's and MONAI's reports of an exception are DEBUG records, and without
    ``debug`` they carry no traceback (clara-fl's own line names the failure). Called again, only ``debug`` changes.

    Args:
        debug: keep the libraries' reports as they log them (``--debug``).
    """
    _FILTER.debug = debug
    if _FILTER.active:
        return
    _FILTER.active = True
    make_record = logging.getLogRecordFactory()

    def make_filtered_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if _from_library(record):
            logger = logging.getLogger(record.name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)  # checked by that logger for this record and every later one
        return record

    logging.setLogRecordFactory(make_filtered_record)
