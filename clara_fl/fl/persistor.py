"""Server-side model persistence with the network built from the job's MMAR."""

from __future__ import annotations

from typing import Any

from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

__all__ = ["ClaraModelPersistor"]


class ClaraModelPersistor(PTFileModelPersistor):
    """:class:`PTFileModelPersistor` whose initial global model is the MMAR's ``train.model``.

    The MMAR is the server app folder, so the server needs no model code of its own; BYOC
    networks come from the app's custom/ folder. The server's own site file (``local/``) applies
    as at any site: its environment values and its code policy.
    """

    def __init__(
        self,
        train_config: str = "config/config_train.json",
        environment: str = "config/environment.json",
        overrides: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=None, **kwargs)
        self.train_config = train_config
        self.environment = environment
        self.overrides = dict(overrides or {})

    def _initialize(self, fl_ctx: FLContext) -> None:
        from clara_fl.config.errors import ConfigError
        from clara_fl.fl.site import code_policy, find_mmar_root, find_site_file, read_site_file
        from clara_fl.workflows.network import build_train_network

        if self.model is None:
            try:
                app_root = find_mmar_root(fl_ctx.get_prop(FLContextKey.APP_ROOT), self.train_config)
                site_file = find_site_file(fl_ctx.get_engine().get_workspace().get_root_dir())
                content = read_site_file(site_file) if site_file else {}
                self.model = build_train_network(
                    app_root,
                    self.train_config,
                    self.environment,
                    self.overrides,
                    extra_environment={**content.get("environment", {}), "SITE_NAME": fl_ctx.get_identity_name() or "server"},
                    code_policy=code_policy(content, site_file),
                )
            except ConfigError as e:
                self.system_panic(reason=f"cannot build the global model: {e}", fl_ctx=fl_ctx)
                return
            self.log_info(fl_ctx, f"global model {type(self.model).__name__} built from {self.train_config}")
        super()._initialize(fl_ctx)
