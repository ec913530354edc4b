"""The server's best global model, chosen among ALL global models, the final one included.

FLARE's :class:`IntimeModelSelector` scores a global model by the validation the sites run at the
start of the next round (``initial_metrics`` in their train results), so the model the last round
produces is never scored and can never become the best (the lag FLARE PR 5244 describes).
:class:`GlobalModelSelector` is that selector plus one more candidate: after the last round,
clara-fl's ScatterAndGather, FedAvg and Scaffold (``clara_fl.fl.server.controllers``) have the sites
validate the final global model the same way (the Learner's evaluator, the MMAR's key metric) and
fire :data:`FINAL_GLOBAL_MODEL_VALIDATED` with their metrics; the selector weighs them as it weighs
every round's, and if the final model is the best, fires FLARE's ``GLOBAL_BEST_MODEL_AVAILABLE``
so the persistor saves it as ``best_FL_global_model.pt``.

A failed train result (a site that refused the round, e.g. its DP budget spent) carries no model and no metrics:
the selector skips it on its return code, with one line, where FLARE's selector would log a traceback ("shareable
data is not a valid DXO").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from nvflare.apis.dxo import MetaKey, from_shareable
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReturnCode, Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.widgets.intime_model_selector import IntimeModelSelector

__all__ = ["GlobalModelSelector", "FINAL_GLOBAL_MODEL_VALIDATED", "FINAL_GLOBAL_MODEL_METRICS"]

FINAL_GLOBAL_MODEL_VALIDATED = "clara_fl.final_global_model_validated"
"""Event: the sites validated the final global model; their metrics are in :data:`FINAL_GLOBAL_MODEL_METRICS`."""
FINAL_GLOBAL_MODEL_METRICS = "clara_fl.final_global_model_metrics"
"""FLContext property: ``{site name: {log_label: value}}`` for the final global model."""

_CROSS_SITE_TASKS = (AppConstants.TASK_SUBMIT_MODEL, AppConstants.TASK_VALIDATION)


class GlobalModelSelector(IntimeModelSelector):
    """:class:`IntimeModelSelector` that also scores the final global model (see the module doc).

    Arguments are IntimeModelSelector's. With ``weigh_by_local_iter``, a site's weight for the final
    model is the number of steps it ran in the last round it contributed to.

    Args:
        saved_best_val_metric: the best value so far (as the selector compares it: negated with
            ``negate_key_metric``) when a job continues a saved run (``clara-fl job resume``); None: none yet.
    """

    def __init__(self, *args: Any, saved_best_val_metric: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_steps: dict[str, float] = {}
        # FedJob exports the attribute named as the argument: keep it (the inherited best_val_metric is -inf)
        self.saved_best_val_metric = saved_best_val_metric
        if saved_best_val_metric is not None:
            self.best_val_metric = float(saved_best_val_metric)
            self.best_raw_val_metric = -self.best_val_metric if self.negate_key_metric else self.best_val_metric

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == AppEventType.BEFORE_CONTRIBUTION_ACCEPT:
            # a ModelController workflow fires it for every result, cross-site evaluation's too: not a round's
            if fl_ctx.get_prop(FLContextKey.TASK_NAME) in _CROSS_SITE_TASKS:
                return
            if self._failed_result(fl_ctx):
                return
            if self.weigh_by_local_iter:
                self._remember_steps(fl_ctx)
        super().handle_event(event_type, fl_ctx)
        if event_type == FINAL_GLOBAL_MODEL_VALIDATED:
            self._score_final_model(fl_ctx.get_prop(FINAL_GLOBAL_MODEL_METRICS) or {}, fl_ctx)

    def _failed_result(self, fl_ctx: FLContext) -> bool:
        """True (with one line) when the contribution is a failed result: a return code other than OK."""
        peer_ctx = fl_ctx.get_peer_context()
        result = peer_ctx.get_prop(FLContextKey.SHAREABLE) if peer_ctx is not None else None
        if not isinstance(result, Shareable):
            return False
        code = result.get_return_code(ReturnCode.OK)
        if code == ReturnCode.OK:
            return False
        site = peer_ctx.get_identity_name(default="?") if peer_ctx is not None else "?"
        self.log_info(fl_ctx, f"no validation metric from {site} this round: its result failed ({code})")
        return True

    def _remember_steps(self, fl_ctx: FLContext) -> None:
        peer_ctx = fl_ctx.get_peer_context()
        try:
            dxo = from_shareable(peer_ctx.get_prop(FLContextKey.SHAREABLE))
        except Exception:  # not a DXO: IntimeModelSelector logs it
            return
        steps = float(dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 1.0))
        self._last_steps[peer_ctx.get_identity_name(default="?")] = steps

    def _score_final_model(self, metrics_by_site: Mapping[str, Any], fl_ctx: FLContext) -> None:
        self._reset_stats()
        for site, metrics in metrics_by_site.items():
            value = metrics.get(self.key_metric) if isinstance(metrics, Mapping) else None
            try:
                value = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                self.log_warning(fl_ctx, f"final global model: no numeric `{self.key_metric}` from {site}: {metrics!r}")
                continue
            if not math.isfinite(value):
                self.log_warning(fl_ctx, f"final global model: `{self.key_metric}` {value} from {site} is not finite")
                continue
            steps = self._last_steps.get(site, 1.0) if self.weigh_by_local_iter else 1.0
            weight = self.aggregation_weights.get(site, 1.0) * steps
            self.validation_metric_weighted_sum += (-value if self.negate_key_metric else value) * weight
            self.raw_validation_metric_weighted_sum += value * weight
            self.validation_metric_sum_of_weights += weight
        if self.validation_metric_sum_of_weights == 0:
            self.log_warning(fl_ctx, "final global model: no site reported its key metric; the best stays as it is")
            return
        mean = self.raw_validation_metric_weighted_sum / self.validation_metric_sum_of_weights
        best = "none yet" if self.best_raw_val_metric is None else f"{self.best_raw_val_metric:.4f}"
        sites = len(metrics_by_site)
        self.log_info(fl_ctx, f"final global model: {self.key_metric} {mean:.4f} ({sites} sites); best so far {best}")
        self._before_aggregate(fl_ctx)  # compares with the best and fires GLOBAL_BEST_MODEL_AVAILABLE if better
