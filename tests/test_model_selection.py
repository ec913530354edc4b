"""The server's model selector with failed train results: a site that refused its round (its DP budget spent) sends a
failed result with no model and no metrics, which the selector skips on its return code, in one line, no traceback."""

from __future__ import annotations

import logging

import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from clara_fl.fl.server.model_selection import GlobalModelSelector


def contribution(selector: GlobalModelSelector, result: Shareable, site: str = "site-2") -> None:
    """Fire BEFORE_CONTRIBUTION_ACCEPT for ``site``'s train ``result`` in round 1, as a workflow does."""
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=True, sticky=False)
    peer.set_prop(FLContextKey.SHAREABLE, result, private=True, sticky=False)
    fl_ctx = FLContext()
    fl_ctx.set_peer_context(peer)
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, 1, private=True, sticky=False)
    selector.handle_event(AppEventType.BEFORE_CONTRIBUTION_ACCEPT, fl_ctx)


def test_a_failed_train_result_is_skipped_in_one_line_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    selector = GlobalModelSelector(key_metric="val_mean_dice")

    with caplog.at_level(logging.DEBUG):
        contribution(selector, make_reply(ReturnCode.EXECUTION_EXCEPTION))

    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert [m for m in messages if "site-2" in m and "result failed (EXECUTION_EXCEPTION)" in m]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not any("Traceback" in m or "not a valid DXO" in m for m in messages)
    assert selector.validation_metric_sum_of_weights == 0


def test_a_successful_train_result_still_has_its_metric_counted() -> None:
    selector = GlobalModelSelector(key_metric="val_mean_dice")
    result = DXO(DataKind.WEIGHT_DIFF, {"w": 1.0}, meta={MetaKey.INITIAL_METRICS: {"val_mean_dice": 0.4}})
    shareable = result.to_shareable()
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 1)

    contribution(selector, shareable)

    assert selector.validation_metric_sum_of_weights == 1
    assert selector.raw_validation_metric_weighted_sum == pytest.approx(0.4)
