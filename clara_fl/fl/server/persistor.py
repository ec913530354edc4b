"""Server-side model persistence with the network built from the job's MMAR."""

from __future__ import annotations

import os
import shutil
import uuid
import weakref
from typing import Any

from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor
from nvflare.fuel.utils import memory_utils

from clara_fl.fl.server.run_state import ServerRunState, is_job_id, read_run_state, write_run_state

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
    resume_from_job = arguments.get("resume_from_job")
    if isinstance(resume_from_job, str) and resume_from_job and not is_job_id(resume_from_job):
        raise ConfigError(
            f"'{resume_from_job}' must be a job id (a name, not a path)", file=file, path=f"{where}.resume_from_job"
        )
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
    as at any site: its environment values, its code policy and its confinement mode. The network
    is built in a confined child process (:mod:`clara_fl.fl.server.network_build`): this process
    never runs the job's model config; it keeps a module with the built network's parameters and
    buffers by name (what this persistor and FedOpt use), loaded with ``weights_only=True``.

    After every saved global model it writes the run state (:mod:`clara_fl.fl.server.run_state`):
    the rounds done and the best model so far, so that ``clara-fl job resume`` can continue a job
    whose server died; then it gives the memory the round freed back to the system (glibc's ``malloc_trim``,
    as a site does before each task). A continuation job names the stranded job in ``resume_from_job``: its
    initial global model is the one that job saved (read from that job's app folder in the same server
    workspace), and the saved best global model stays the best until a better one comes.

    Args:
        train_config: the MMAR's train config the network is built from.
        environment: the MMAR's environment.json for that config.
        overrides: values on top of the environment.
        resume_from_job: the id of a job of this server whose saved run to continue (``clara-fl job resume``).
        exclude_vars: a regular expression: the variables left out of the global model sent to the sites.
        dp_compatible: the job trains with DP-SGD: the global model is the network Opacus trains (BatchNorm
            replaced by GroupNorm, as at the sites).
        **kwargs: PTFileModelPersistor's arguments.
    """

    model: Any  # the network's tensors, built by _initialize from the MMAR (PTFileModelPersistor's attribute)

    def __init__(
        self,
        train_config: str = "config/config_train.json",
        environment: str = "config/environment.json",
        overrides: dict[str, Any] | None = None,
        resume_from_job: str = "",
        filter_id: str | None = None,
        exclude_vars: str | None = None,
        dp_compatible: bool = False,
        **kwargs: Any,
    ) -> None:
        # filter_id: a PersistorFilter component, e.g. FLARE's HEModelSerializeFilter for an encrypted global model;
        # exclude_vars (named here so that a recipe exports it): variables left out of the global model sent
        super().__init__(model=None, filter_id=filter_id, exclude_vars=exclude_vars, **kwargs)
        self.job_arguments = {**kwargs, "exclude_vars": exclude_vars, "resume_from_job": resume_from_job}
        self.train_config = train_config
        self.environment = environment
        self.overrides = dict(overrides or {})
        self.resume_from_job = resume_from_job
        self.dp_compatible = dp_compatible
        self._rounds: tuple[int, int] | None = None  # (rounds done, total rounds) at the last save
        self._best: tuple[float, int] | None = None  # (selector value, round) of the best global model
        # The global model whose global checkpoint file holds it as it is now, if any (see _link_best_to_saved)
        self._saved_as_is: weakref.ref[ModelLearnable] | None = None

    def _initialize(self, fl_ctx: FLContext) -> None:
        from clara_fl.config.errors import ConfigError
        from clara_fl.fl.server.network_build import BuildRequest, build_network_confined
        from clara_fl.fl.site.context import code_policy, find_mmar_root, find_site_file, read_site_file, site_options

        if self.model is None:
            try:
                app_dir = fl_ctx.get_prop(FLContextKey.APP_ROOT)
                app_root = find_mmar_root(app_dir, self.train_config)
                site_file = find_site_file(fl_ctx.get_engine().get_workspace().get_root_dir())
                content = read_site_file(site_file) if site_file else {}
                policy = code_policy(content, site_file)
                options = site_options(content, site_file)  # its "confinement": required, preferred or off
                if policy == "restricted":
                    check_persistor_arguments(self.job_arguments, app_root)
                request = BuildRequest(
                    mmar_root=app_root,
                    train_config=self.train_config,
                    environment=self.environment,
                    overrides=self.overrides,
                    site_values={
                        **content.get("environment", {}),
                        "SITE_NAME": fl_ctx.get_identity_name() or "server",
                    },
                    code_policy=policy,
                    catalog=options["catalog"],
                    dp_compatible=self.dp_compatible,
                )
                # The job's train.model is built in a confined child; only its tensors come back.
                self.model, confinement = build_network_confined(app_dir, request, options["confinement"])
            except ConfigError as e:
                self.system_panic(reason=f"cannot build the global model: {e}", fl_ctx=fl_ctx)
                return
            self.log_info(
                fl_ctx,
                f"global model {type(self.model).__name__} built from {self.train_config} in a separate process"
                + (f" ({confinement})" if confinement else ""),
            )
        super()._initialize(fl_ctx)
        if self.resume_from_job:
            self._resume(fl_ctx)

    def _resume(self, fl_ctx: FLContext) -> None:
        """Start from the run that job ``resume_from_job`` saved: its app folder beside this job's in the workspace."""
        from clara_fl.config.errors import ConfigError

        app_root = os.path.normpath(fl_ctx.get_prop(FLContextKey.APP_ROOT))
        workspace, app_name = os.path.dirname(os.path.dirname(app_root)), os.path.basename(app_root)
        folder = os.path.join(workspace, self.resume_from_job, app_name)
        try:
            if not is_job_id(self.resume_from_job):
                raise ConfigError(f"'{self.resume_from_job}' is not a job id", path="resume_from_job")
            saved = read_run_state(folder)
            for name in (saved.global_model, saved.best_model):
                if name and not os.path.isfile(os.path.join(folder, name)):
                    raise ConfigError(f"the saved model {name} is missing", file=folder)
        except ConfigError as e:
            self.system_panic(reason=f"cannot resume job {self.resume_from_job}: {e}", fl_ctx=fl_ctx)
            return
        self.ckpt_preload_path = os.path.join(folder, saved.global_model)
        if saved.best_model and saved.best_metric is not None and saved.best_round is not None:
            shutil.copyfile(os.path.join(folder, saved.best_model), self._best_ckpt_save_path)
            self._best = (saved.best_metric, saved.best_round)
        self.log_info(
            fl_ctx,
            f"resuming job {saved.job_id} after round {saved.rounds_done - 1} of {saved.total_rounds}: "
            f"global model from {os.path.join(folder, saved.global_model)}",
        )

    def save_model(self, ml: ModelLearnable, fl_ctx: FLContext) -> None:
        super().save_model(ml, fl_ctx)  # atomic: a temporary file, fsync, rename
        # With a persistor filter what was saved is the filter's form of the model, not the workflow's model
        self.remember_saved(None if self.filter_id else ml)
        current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        start_round = fl_ctx.get_prop(AppConstants.START_ROUND) or 0
        num_rounds = fl_ctx.get_prop(AppConstants.NUM_ROUNDS)
        if isinstance(current_round, int) and isinstance(num_rounds, int):
            self._rounds = (current_round + 1, start_round + num_rounds)
            self._write_run_state(fl_ctx)
        # Once a round: the sites' results and the model's serialized copies are freed by now, and glibc keeps freed
        # pages in the arenas of FLARE's many threads (docs/benchmarks.md, figure 5). As the sites do before each
        # task; milliseconds, no gc.collect (FLARE's memory_gc_rounds does that, every few rounds).
        memory_utils.try_malloc_trim()

    def remember_saved(self, ml: ModelLearnable | None) -> None:
        """Record that the global checkpoint file now holds ``ml`` as it is (None: nothing the workflow holds)."""
        self._saved_as_is = weakref.ref(ml) if ml is not None else None

    def handle_event(self, event: str, fl_ctx: FLContext) -> None:
        if event == AppEventType.BEFORE_SHAREABLE_TO_LEARNABLE:
            self._saved_as_is = None  # FLARE's generators update the global model in place
        linked = event == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE and self._link_best_to_saved(fl_ctx)
        if not linked:
            super().handle_event(event, fl_ctx)
        if event == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE:
            value = fl_ctx.get_prop(AppConstants.VALIDATION_RESULT)
            current_round = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
            if isinstance(value, (int, float)) and isinstance(current_round, int):
                self._best = (float(value), current_round)
                self._write_run_state(fl_ctx)

    def _link_best_to_saved(self, fl_ctx: FLContext) -> bool:
        """Make the best-model checkpoint a hard link to the global checkpoint file when that file holds the model the
        event names (the workflow's global model, as last saved and not changed since), instead of FLARE's second
        serialization and fsync of the same model (1.25 s a round for an encrypted spleen model). The next global
        model replaces the global file by a rename, which leaves the link's content as it was. Returns False where
        FLARE's own save must run: another model, a filtered save, a file system without hard links.
        """
        saved = self._saved_as_is() if self._saved_as_is is not None else None
        current = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        if saved is None or (current is not None and current is not saved):
            return False
        folder = os.path.dirname(os.path.abspath(self._best_ckpt_save_path))
        temp = os.path.join(folder, f".{os.path.basename(self._best_ckpt_save_path)}.{uuid.uuid4().hex}.tmp")
        try:
            os.link(self._ckpt_save_path, temp)
            os.replace(temp, self._best_ckpt_save_path)
        except OSError:
            try:
                os.remove(temp)
            except OSError:
                pass
            return False
        return True

    def _write_run_state(self, fl_ctx: FLContext) -> None:
        """The run state beside the global model; written after the model, so it never names a round not saved."""
        if self._rounds is None:
            return
        best = self._best
        state = ServerRunState(
            job_id=str(fl_ctx.get_job_id()),
            rounds_done=self._rounds[0],
            total_rounds=self._rounds[1],
            global_model=os.path.basename(self._ckpt_save_path),
            best_model=os.path.basename(self._best_ckpt_save_path) if best else None,
            best_metric=best[0] if best else None,
            best_round=best[1] if best else None,
        )
        write_run_state(os.path.dirname(self._ckpt_save_path), state)
