"""Server-side model persistence with the network built from the job's MMAR."""

from __future__ import annotations

import os
from typing import Any

from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

__all__ = ["ClaraModelPersistor", "check_persistor_arguments"]

FILE_NAME_ARGS = ("global_model_file_name", "best_global_model_file_name")


def check_persistor_arguments(arguments: dict[str, Any], app_root: str) -> None:
    """The restricted policy at the server: a job's persistor writes its models inside the app folder
    and never unpickles a checkpoint.

    Raises:
        ConfigError: naming the argument of ``config_fed_server.json`` that the policy refuses.
    """
    from clara_fl.config.errors import ConfigError
    from clara_fl.config.restrictions import Restrictions, looks_like_escape

    file, where = "config/config_fed_server.json", "components[persistor].args"
    if arguments.get("load_weights_only") is False:
        raise ConfigError(
            "'load_weights_only: false' is refused by the restricted policy (it unpickles)",
            file=file,
            path=f"{where}.load_weights_only",
        )
    for name in FILE_NAME_ARGS:
        value = arguments.get(name)
        if isinstance(value, str) and looks_like_escape(value):
            raise ConfigError(
                f"'{value}' must be a file name inside the job's app folder", file=file, path=f"{where}.{name}"
            )
    source = arguments.get("source_ckpt_file_full_name")
    if isinstance(source, str):
        try:
            Restrictions(app_root).check_read(os.path.join(app_root, "custom", source), "", "checkpoint")
        except ConfigError as e:
            raise ConfigError(e.message, file=file, path=f"{where}.source_ckpt_file_full_name") from e


class ClaraModelPersistor(PTFileModelPersistor):
    """:class:`PTFileModelPersistor` whose initial global model is the MMAR's ``train.model``.

    The MMAR is the server app folder, so the server needs no model code of its own; BYOC
    networks come from the app's custom/ folder. The server's own site file (``local/``) applies
    as at any site: its environment values and its code policy.
    """

    model: Any  # the network, built by _initialize from the MMAR (PTFileModelPersistor's attribute)

    def __init__(
        self,
        train_config: str = "config/config_train.json",
        environment: str = "config/environment.json",
        overrides: dict[str, Any] | None = None,
        filter_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        # filter_id: a PersistorFilter component, e.g. FLARE's HEModelSerializeFilter for an encrypted global model
        super().__init__(model=None, filter_id=filter_id, **kwargs)
        self.job_arguments = dict(kwargs)
        self.train_config = train_config
        self.environment = environment
        self.overrides = dict(overrides or {})

    def _initialize(self, fl_ctx: FLContext) -> None:
        from clara_fl.config.errors import ConfigError
        from clara_fl.fl.site.context import code_policy, find_mmar_root, find_site_file, read_site_file
        from clara_fl.workflows.network import build_train_network

        if self.model is None:
            try:
                app_root = find_mmar_root(fl_ctx.get_prop(FLContextKey.APP_ROOT), self.train_config)
                site_file = find_site_file(fl_ctx.get_engine().get_workspace().get_root_dir())
                content = read_site_file(site_file) if site_file else {}
                if code_policy(content, site_file) == "restricted":
                    check_persistor_arguments(self.job_arguments, app_root)
                self.model = build_train_network(
                    app_root,
                    self.train_config,
                    self.environment,
                    self.overrides,
                    extra_environment={
                        **content.get("environment", {}),
                        "SITE_NAME": fl_ctx.get_identity_name() or "server",
                    },
                    code_policy=code_policy(content, site_file),
                )
            except ConfigError as e:
                self.system_panic(reason=f"cannot build the global model: {e}", fl_ctx=fl_ctx)
                return
            self.log_info(fl_ctx, f"global model {type(self.model).__name__} built from {self.train_config}")
        super()._initialize(fl_ctx)
