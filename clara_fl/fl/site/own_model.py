"""A site's own model in a federated evaluation (``clara-fl evaluate --site-models``): the site submits it for every
site to score, as at the end of a training job, where the Learner submits its best local model.

An evaluation job trains nothing, so the model comes from where the site keeps it: the site file's ``own_model``
(a checkpoint path; ``{SITE_NAME}`` and the site file's environment values may be used in it), else the newest
``models/model.pt`` a training job of the same network left in the site's workspace
(``<workspace>/<job>/app_<site>/models/``, the MMAR's best model by key metric): a job counts when its
config_train.json defines ``train.model`` exactly as this job's does, so a site that also trained another MMAR does
not submit that one's model. It is loaded weights-only. A site with none, or with a file that does not load,
answers with a failure that names neither the file nor its folder (:mod:`clara_fl.fl.site.failure_report`); the
whole line stays in the site's log.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from clara_fl.config.errors import ConfigError
from clara_fl.config.variables import PLACEHOLDER
from clara_fl.fl.site.context import SiteContext, find_mmar_root, read_site_file
from clara_fl.fl.site.failure_report import SiteFailure

__all__ = ["OWN_MODEL_KEY", "OwnModelSubmitter", "find_own_model", "own_model_weights"]

OWN_MODEL_KEY = "own_model"  # in the site file
TRAINED_MODEL = os.path.join("models", "model.pt")  # in a training job's app folder at the site
TRAIN_CONFIG = os.path.join("config", "config_train.json")
STAGE = "submit_model"
_UNREADABLE = object()  # a job whose network definition cannot be read matches nothing


def network_definition(app_dir: str) -> Any:
    """The raw ``train.model`` of the MMAR in the job app folder ``app_dir``; a marker matching no other definition
    where the folder holds no readable MMAR or its config no network."""
    from clara_fl.workflows.network import train_model_spec

    try:
        return train_model_spec(find_mmar_root(app_dir, TRAIN_CONFIG), TRAIN_CONFIG)
    except ConfigError:
        return _UNREADABLE


def find_own_model(site: SiteContext, workspace_root: str, job_id: str) -> str | None:
    """The checkpoint this site submits as its own: the site file's ``own_model``, else the newest
    ``models/model.pt`` of another job in ``workspace_root`` whose MMAR defines the same network as this job's
    (``site.app_dir``); None when there is none.

    Raises:
        ConfigError: the site file's ``own_model`` is not a text.
    """
    content = read_site_file(site.site_file) if site.site_file else {}
    named = content.get(OWN_MODEL_KEY)
    if named is not None:
        if not isinstance(named, str) or not named:
            raise ConfigError("must be a checkpoint's path", file=site.site_file, path=OWN_MODEL_KEY)
        values = site.variables()
        path = PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), m.group(0))), named)
        return os.path.expanduser(path)
    pattern = os.path.join(glob.escape(workspace_root), "*", f"app_{glob.escape(site.name)}", TRAINED_MODEL)
    current = os.path.realpath(os.path.join(workspace_root, job_id))
    found = [p for p in glob.glob(pattern) if not p.startswith(current + os.sep) and os.path.isfile(p)]
    network = network_definition(site.app_dir)
    if network is _UNREADABLE:
        return None
    same_network = [p for p in found if network_definition(os.path.dirname(os.path.dirname(p))) == network]
    return max(same_network, key=os.path.getmtime) if same_network else None


def own_model_weights(path: str) -> dict[str, Any]:
    """The network weights in the checkpoint ``path`` (Clara's ``{"model": ...}`` or a state_dict), as numpy.

    Raises:
        ConfigError: the file is missing, does not load weights-only, holds no weights or non-finite ones.
    """
    from clara_fl.fl.site.weights import non_finite_keys
    from clara_fl.runtime.checkpoint import load_checkpoint, model_state, strip_ddp_prefix

    state = strip_ddp_prefix(model_state(load_checkpoint(path), path))
    if not all(hasattr(v, "numpy") for v in state.values()):
        raise ConfigError("the checkpoint's weights hold values that are not tensors", file=path)
    weights = {k: v.numpy() for k, v in state.items()}
    if non_finite_keys(weights):
        raise ConfigError("the checkpoint holds NaN/Inf weights", file=path)
    return weights


class OwnModelSubmitter(Executor):
    """Executor for the ``submit_model`` task of an evaluation job: this site's own model as WEIGHTS.

    Args:
        train_config: the MMAR's train config in the job's app folder (where the site's context finds the MMAR).
        submit_model_task_name: the task it serves.
    """

    def __init__(
        self,
        train_config: str = "config/config_train.json",
        submit_model_task_name: str = AppConstants.TASK_SUBMIT_MODEL,
    ) -> None:
        super().__init__()
        self.train_config = train_config
        self.submit_model_task_name = submit_model_task_name

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        from clara_fl.fl.site.context import site_context
        from clara_fl.fl.site.learner import failure_reply

        if task_name != self.submit_model_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        site: SiteContext | None = None
        try:
            site = site_context(fl_ctx, self.train_config)
            workspace_root = fl_ctx.get_engine().get_workspace().get_root_dir()
            path = find_own_model(site, workspace_root, str(fl_ctx.get_job_id()))
            if path is None:
                detail = (
                    f"this site has no model of its own: no '{OWN_MODEL_KEY}' in its site file and no "
                    f"{TRAINED_MODEL} of a training job of this MMAR's network in {workspace_root}"
                )
                failure = SiteFailure.refusal(STAGE, "no_own_model", detail)
                return failure_reply(self, fl_ctx, failure, site.send_error_details)
            weights = own_model_weights(path)
        except ConfigError as e:
            failure = SiteFailure.from_exception(STAGE, e, site.app_dir if site else None)
            return failure_reply(self, fl_ctx, failure, site.send_error_details if site else False)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        self.log_info(fl_ctx, f"submitting this site's own model ({len(weights)} tensors) from {path}")
        return DXO(data_kind=DataKind.WEIGHTS, data=weights).to_shareable()
