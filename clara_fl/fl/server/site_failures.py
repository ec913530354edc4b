"""One line at the server for every task a site failed, and a record of the cross-site cells that failed.

FLARE's controllers log a failed result by its return code only ("Execution Exception in model validation",
"Ignore the result from site-3"), and ``ValidationJsonGenerator`` leaves a failed cell out of
``cross_val_results.json``, so a site whose data is broken vanishes from the cross-site table. clara-fl's
Learner puts its reason in the reply's ``__error__`` header (:data:`ReservedHeaderKey.ERROR`, FLARE's own
header for it); :class:`SiteFailureReporter` logs it with the site and task, and writes the failed cells to
``cross_site_val/cross_val_failures.json`` beside FLARE's results (read by :mod:`clara_fl.fl.jobs.results`).

The reason is what the site chose to send: the stage, the error's kind and the config item, never a case or a
data path (:meth:`clara_fl.fl.site.failure_report.SiteFailure.public_text`), the full line only from a site that
opted in. It is taken as it arrives, from any site version, but only as one line of at most
:data:`MAX_REASON` characters, and only if it is text.
"""

from __future__ import annotations

import os

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from clara_fl.fl.jobs.results import CROSS_SITE_DIR, FAILURES_NAME, CrossSiteFailures
from clara_fl.fl.site.failure_report import one_line

__all__ = ["MAX_REASON", "SiteFailureReporter", "failure_reason"]

#: The most of a site's reason the server keeps (a site's full error text can be long).
MAX_REASON = 1000


def failure_reason(result: Shareable) -> str:
    """``<return code>: <the site's reason>`` on one line, the reason cut at :data:`MAX_REASON` characters; only
    the return code when the site sent no reason, or one that is not text."""
    code = result.get_return_code(ReturnCode.OK)
    reason = result.get_header(ReservedHeaderKey.ERROR)
    reason = one_line(reason) if isinstance(reason, str) else ""
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 3] + "..."
    return f"{code}: {reason}" if reason else str(code)


class SiteFailureReporter(FLComponent):
    """Logs ``site-3 failed task 'train' ...: <its reason>`` once per failed result, and records failed
    cross-site cells (a model a site could not validate; a site that could not submit its model)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = CrossSiteFailures()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self.failures = CrossSiteFailures()
        elif event_type == EventType.BEFORE_PROCESS_SUBMISSION:
            self._log_failure(fl_ctx)
        elif event_type == AppEventType.VALIDATION_RESULT_RECEIVED:
            result = fl_ctx.get_prop(AppConstants.VALIDATION_RESULT)
            if isinstance(result, Shareable) and _failed(result):
                site, owner = fl_ctx.get_prop(AppConstants.DATA_CLIENT), fl_ctx.get_prop(AppConstants.MODEL_OWNER)
                self.failures.validations.setdefault(str(site), {})[str(owner)] = failure_reason(result)
                self._write(fl_ctx)
        elif event_type == AppEventType.RECEIVE_BEST_MODEL:
            result = fl_ctx.get_prop(AppConstants.RECEIVED_MODEL)
            if isinstance(result, Shareable) and _failed(result):
                owner = str(fl_ctx.get_prop(AppConstants.RECEIVED_MODEL_OWNER))
                self.failures.models[owner] = failure_reason(result)
                self._write(fl_ctx)

    def _log_failure(self, fl_ctx: FLContext) -> None:
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
        if not isinstance(result, Shareable) or not _failed(result):
            return
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer else "a site"
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME)
        reason = failure_reason(result)
        self.log_error(fl_ctx, f"{site} failed task '{task}': {reason}")
        # the failed cross-site cells, from the result itself: the ModelController's CrossSiteEval fires none of
        # the events below for a failed result (ScatterAndGather's CrossSiteModelEval does; the cells are the same)
        if task == AppConstants.TASK_SUBMIT_MODEL:
            self.failures.models[site] = reason
            self._write(fl_ctx)
        elif task == AppConstants.TASK_VALIDATION and isinstance(result.get_header(AppConstants.MODEL_OWNER), str):
            self.failures.validations.setdefault(site, {})[result.get_header(AppConstants.MODEL_OWNER)] = reason
            self._write(fl_ctx)

    def _write(self, fl_ctx: FLContext) -> None:
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        self.failures.write(os.path.join(run_dir, CROSS_SITE_DIR, FAILURES_NAME))


def _failed(result: Shareable) -> bool:
    return result.get_return_code(ReturnCode.OK) != ReturnCode.OK
