"""The server's models of a federated evaluation job: the given models the job carries, served to
CrossSiteModelEval by name (its ``model_locator``).

``clara-fl evaluate`` checked each model against the MMAR's network and wrote its weights into the job's app
folder as a plain state_dict; here they are loaded weights-only again (a job folder may have been changed since),
and a file that is missing, outside the app folder or not weights-only ends the job at its start with one line.
"""

from __future__ import annotations

import os
from typing import Any

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model_locator import ModelLocator

from clara_fl.config.errors import ConfigError

__all__ = ["GivenModelLocator"]


class GivenModelLocator(ModelLocator):
    """Serves the job's given models to cross-site evaluation: ``locate_model(NAME)`` is the model's weights.

    CrossSiteModelEval names a server model ``SRV_<NAME>`` in ``cross_val_results.json``.

    Args:
        models: each model's file by name, relative to the server's app folder.
    """

    def __init__(self, models: dict[str, str]) -> None:
        super().__init__()
        self.models = dict(models)
        self._app_root: str | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type != EventType.START_RUN:
            return
        self._app_root = os.path.realpath(str(fl_ctx.get_prop(FLContextKey.APP_ROOT)))
        try:
            for name in self.models:
                self._weights(name)
        except ConfigError as e:
            self.system_panic(reason=f"cannot serve the models to evaluate: {e}", fl_ctx=fl_ctx)
            return
        self.log_info(fl_ctx, f"models to evaluate: {', '.join(self.models)}")

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        return list(self.models)

    def locate_model(self, model_name: str, fl_ctx: FLContext) -> DXO:
        """The weights of ``model_name`` as a WEIGHTS DXO of numpy arrays.

        Raises:
            ConfigError: the model is not one of the job's, or its file does not load weights-only.
        """
        return DXO(data_kind=DataKind.WEIGHTS, data=self._weights(model_name))

    def _weights(self, name: str) -> dict[str, Any]:
        from clara_fl.runtime.checkpoint import load_checkpoint, model_state

        if name not in self.models:
            raise ConfigError(f"'{name}' is not one of the job's models ({', '.join(self.models)})")
        root = self._app_root or os.getcwd()
        path = os.path.realpath(os.path.join(root, self.models[name]))
        if os.path.commonpath([root, path]) != root:
            raise ConfigError(
                f"'{self.models[name]}' must be a file inside the job's app folder", path=f"models.{name}"
            )
        state = model_state(load_checkpoint(path), path)
        if not all(hasattr(v, "numpy") for v in state.values()):
            raise ConfigError("the model's weights hold values that are not tensors", file=path)
        return {k: v.numpy() for k, v in state.items()}
