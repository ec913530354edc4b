"""The site's confined process: where a job's config code runs at an FL site, for the whole job.

FLARE's job process at a site holds the site's secrets (its startup kit, its connection to the server) and
runs FLARE's threads. A job's MMAR, written by another party, is never built there: the Learner and the
Validator start one child process per job (``python -m clara_fl.fl.site.confined``), which confines
itself with Landlock (:mod:`clara_fl.runtime.confinement`) before it imports PyTorch or reads any file of
the job, and then builds and runs the job's configs for every task of the job. It is the second wall behind
the restricted code policy: whatever a job's code manages to run, it cannot write outside the job's folder,
read the site's startup kit or other jobs, start another program than Python, or open a TCP socket.

The two processes talk over a socket pair: JSON messages (requests, replies, and events such as a training
curve point) and, for tensors, files in the child's private temporary folder written by
:mod:`clara_fl.fl.site.exchange` and always read with ``weights_only=True``. A second pipe is the child's
lifeline: a request's abort travels on it, and its end (the FLARE process is gone, however it ended) ends the
child at once. The child's log lines go to the FLARE process, which writes them into the site's log.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from clara_fl.fl.site.failure_report import SiteFailure
from clara_fl.fl.site.local_training import (
    BAD_TASK_DATA,
    EXECUTION_EXCEPTION,
    LocalTraining,
    LocalValidation,
    SiteTaskFailed,
    TrainingSettings,
    ValidationSettings,
    never,
)

__all__ = [
    "SiteProcessSpec",
    "SiteProcess",
    "SiteService",
    "InProcessSite",
    "SiteBackend",
    "open_site",
    "close_site",
    "settings_dict",
    "serve",
]

logger = logging.getLogger(__name__)

_ABORT = struct.Struct("<I")  # a request id on the lifeline: abort that request
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class SiteProcessSpec:
    """What the confined process of one job at one site may touch.

    Args:
        app_dir: the job's app folder (the MMAR): the only folder it may write, besides its private temp folder.
        data_roots: the site's data folders (from its site file): read-only.
        confinement: the site's ``confinement`` setting: ``required``, ``preferred`` or ``off``.
        ddp: the job trains in several processes per site (``torchrun``): loopback TCP between them is allowed.
    """

    app_dir: str
    data_roots: tuple[str, ...] = ()
    confinement: str = "preferred"
    ddp: bool = False


class SiteBackend(Protocol):
    """Where the site's tasks run: the confined process (:class:`SiteProcess`), or this process in tests."""

    def call(
        self,
        method: str,
        params: dict[str, Any],
        payload: Any = None,
        should_abort: Callable[[], bool] = never,
        on_metric: Callable[[str, float, int], None] | None = None,
    ) -> tuple[dict[str, Any], Any]: ...

    def stop(self) -> None: ...


class SiteService:
    """The tasks of one job at one site, by name; run in the confined process.

    ``init_training`` builds the trainer once (a Learner that FLARE builds anew for the next task finds it
    built); ``train``, ``validate`` and ``submit_model`` use it; ``cross_validate`` builds the validation
    config for each model. A task that fails raises :class:`SiteTaskFailed`.
    """

    def __init__(self) -> None:
        from clara_fl.runtime.library_logs import quiet_library_exceptions

        # the site's log gets one line per failed task (SiteFailure.local_text), not the libraries' tracebacks
        quiet_library_exceptions(debug=False)
        self.training: LocalTraining | None = None
        self._training_settings: TrainingSettings | None = None
        self._metric_sink: Callable[[str, float, int], None] | None = None

    def handle(
        self,
        method: str,
        params: dict[str, Any],
        payload: Any,
        should_abort: Callable[[], bool],
        on_metric: Callable[[str, float, int], None] | None,
    ) -> tuple[dict[str, Any], Any]:
        self._metric_sink = on_metric
        if method == "init_training":
            self._init_training(TrainingSettings(**params["settings"]), bool(params.get("stream_metrics")))
            return {}, None
        if method == "cross_validate":
            validation = LocalValidation(ValidationSettings(**params["settings"]))
            return {"metrics": validation.validate(str(params["owner"]), payload["weights"], should_abort)}, None
        if method == "data_stats":  # clara-fl stats: the cases read through the MMAR's loader, summarized
            from clara_fl.fl.stats.loading import data_stats_task

            return {}, data_stats_task(params, should_abort)
        training = self._built_training(method)
        if method == "train":
            outcome = training.train(params["data_kind"], payload["data"], payload["meta"], should_abort)
            result = {"data_kind": outcome.data_kind, "steps": outcome.steps, "aborted": outcome.aborted}
            if outcome.kept is not None:  # the site's keep_better_model choice, for its events file
                result["kept"] = outcome.kept
            return result, {"weights": outcome.weights, "meta": outcome.meta}
        if method == "validate":
            metrics = training.validate(
                params["data_kind"], payload["data"], str(params["validate_type"]), should_abort
            )
            result = {"metrics": metrics}
            if params.get("offer_to_kept") and metrics is not None and not should_abort():
                kept = training.keep_better_with(params["data_kind"], payload["data"], metrics)
                if kept is not None:
                    result["kept"] = kept
            return result, None
        if method == "submit_model":
            return {}, {"weights": training.model_for_validation(params.get("model_name"))}
        raise ValueError(f"unknown site task '{method}'")

    def close(self) -> None:
        if self.training is not None:
            self.training.close()
        self.training, self._training_settings = None, None

    def _init_training(self, settings: TrainingSettings, stream_metrics: bool) -> None:
        if self.training is not None and settings == self._training_settings:
            return
        if self.training is not None:
            self.training.close()
        self.training, self._training_settings = None, None
        training = LocalTraining(settings, metrics_writer=_MetricsToParent(self) if stream_metrics else None)
        training.build()
        self.training, self._training_settings = training, settings

    def _built_training(self, stage: str) -> LocalTraining:
        if self.training is None:
            raise SiteTaskFailed(SiteFailure.refusal(stage, "not_built", "the site's trainer was not built"))
        return self.training

    def emit_metric(self, tag: str, value: float, step: int) -> None:
        if self._metric_sink is not None:
            self._metric_sink(tag, value, step)


class _MetricsToParent:
    """The analytics writer a :class:`~clara_fl.fl.site.streaming.MetricsStreamer` sees in the confined process."""

    def __init__(self, service: SiteService) -> None:
        self.service = service

    def add_scalar(self, tag: str, scalar: float, global_step: int | None = None, **kwargs: Any) -> None:
        self.service.emit_metric(str(tag), float(scalar), int(global_step or 0))


class InProcessSite:
    """A :class:`SiteBackend` running the tasks in this process: for tests of the FLARE adapters only.

    It has no confinement, so nothing at a site uses it: the adapters always open a :class:`SiteProcess`.
    """

    def __init__(self) -> None:
        self.service = SiteService()

    def call(
        self,
        method: str,
        params: dict[str, Any],
        payload: Any = None,
        should_abort: Callable[[], bool] = never,
        on_metric: Callable[[str, float, int], None] | None = None,
    ) -> tuple[dict[str, Any], Any]:
        return self.service.handle(method, params, payload, should_abort, on_metric)

    def stop(self) -> None:
        self.service.close()


class SiteProcess:
    """The FLARE process's handle on a job's confined process (see the module docstring).

    Raises (from :meth:`call`):
        SiteTaskFailed: the task failed in the confined process, or the process is gone.
        ConfinementUnavailable: the site requires confinement and this machine cannot give it (at start).
    """

    def __init__(self, spec: SiteProcessSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._next_id = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: Any = None
        self._lifeline: int | None = None
        self._temp_dir: str | None = None
        self._log_reader: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        from multiprocessing.connection import Connection

        from clara_fl.runtime.confinement import (
            REQUIRED_ABI,
            confined_environment,
            confinement_status,
            job_confinement,
            make_temp_dir,
            spawn_args,
        )
        from clara_fl.runtime.landlock import landlock_abi

        if self.spec.confinement == "required" and landlock_abi() < REQUIRED_ABI:
            raise SiteTaskFailed(
                SiteFailure.refusal(
                    "build",
                    "confinement_unavailable",
                    f"this site requires confinement: {confinement_status('required')}",
                )
            )
        self._temp_dir = make_temp_dir("clara-fl-job-")
        confinement = job_confinement(self.spec.app_dir, self.spec.data_roots, self._temp_dir, ddp=self.spec.ddp)
        parent_end, child_end = socket.socketpair()
        lifeline_read, lifeline_write = os.pipe()
        command = [
            sys.executable,
            "-m",
            "clara_fl.fl.site.confined",
            *spawn_args(confinement, self.spec.confinement),
        ]
        command += ["--channel-fd", str(child_end.fileno()), "--lifeline-fd", str(lifeline_read)]
        command += ["--exchange", self._temp_dir]
        environment = {**confined_environment(self._temp_dir), "PYTHONUNBUFFERED": "1"}
        environment.pop("PYTHONSTARTUP", None)
        try:
            self._process = subprocess.Popen(
                command,
                pass_fds=(child_end.fileno(), lifeline_read),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=self.spec.app_dir,
            )
        finally:
            child_end.close()
            os.close(lifeline_read)
        self._channel = Connection(os.dup(parent_end.fileno()))
        parent_end.close()
        self._lifeline = lifeline_write
        self._log_reader = threading.Thread(target=self._relay_log, name="clara-fl-site-log", daemon=True)
        self._log_reader.start()

    def call(
        self,
        method: str,
        params: dict[str, Any],
        payload: Any = None,
        should_abort: Callable[[], bool] = never,
        on_metric: Callable[[str, float, int], None] | None = None,
    ) -> tuple[dict[str, Any], Any]:
        """Run task ``method`` in the confined process and wait for its reply; ``should_abort`` is polled."""
        from nvflare.fuel.utils.memory_utils import try_malloc_trim

        from clara_fl.fl.site.exchange import write_payload

        with self._lock:
            if not self.alive:
                raise self._died(method)
            # The last task's weights, FLARE's received and sent messages (18 MB each way for the spleen UNet),
            # are freed by now; glibc keeps freed pages in the arenas of FLARE's many threads, and the site's
            # RSS grew by megabytes a round without this (docs/benchmarks.md, figure 5). A few milliseconds.
            try_malloc_trim()
            self._next_id += 1
            request_id = self._next_id
            message: dict[str, Any] = {"id": request_id, "method": method, "params": params}
            if payload is not None:
                message["payload"] = self._exchange_file(f"request-{request_id}.pt")
                write_payload(message["payload"], payload)
            self._channel.send_bytes(json.dumps(message).encode())
            aborted = False
            while True:
                if not self._channel.poll(0.2):
                    if not aborted and should_abort():
                        aborted = True
                        os.write(self._require_lifeline(), _ABORT.pack(request_id))
                    if not self.alive:
                        raise self._died(method)
                    continue
                try:
                    reply = json.loads(self._channel.recv_bytes())
                except (EOFError, OSError, ValueError):
                    raise self._died(method) from None
                if reply.get("event") == "metric":
                    _forward_metric(reply, on_metric)
                    continue
                if reply.get("id") != request_id:
                    continue
                break
            if "payload" in message:
                # read by now: each task's weights (18 MB for the spleen UNet) would otherwise pile up in the
                # temporary folder until the job ends, in RAM where /tmp is a tmpfs
                with contextlib.suppress(OSError):
                    os.remove(message["payload"])
            return self._outcome(method, reply)

    def _outcome(self, method: str, reply: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """The result and payload of a reply; a failure, or a reply that is not what this side sends (the
        confined process runs a job's code, so its replies are checked like any input), as SiteTaskFailed."""
        from pickle import UnpicklingError

        from clara_fl.fl.site.exchange import read_payload

        try:
            if not reply.get("ok"):
                failure = SiteFailure.from_record(reply.get("failure") or {})
                code = reply.get("return_code")
                raise SiteTaskFailed(
                    failure, code if code in (EXECUTION_EXCEPTION, BAD_TASK_DATA) else EXECUTION_EXCEPTION
                )
            result = reply.get("result") or {}
            if not isinstance(result, dict):
                raise ValueError(f"a result must be an object, got {type(result).__name__}")
            out = None
            if reply.get("payload"):
                path = self._exchange_file(os.path.basename(str(reply["payload"])))
                try:
                    out = read_payload(path)
                finally:
                    os.remove(path)
            return result, out
        except (ValueError, KeyError, OSError, UnpicklingError) as e:
            logger.error("the site's confined process answered '%s' with a reply that is refused: %s", method, e)
            detail = f"the site's confined process sent a malformed reply ({type(e).__name__}); see the site log"
            raise SiteTaskFailed(SiteFailure.refusal(method, "bad_reply", detail)) from e

    def stop(self, grace: float = 1.0, timeout: float = 5.0) -> None:
        """End the process: ask it to stop (it finishes writing the site's state), and after ``grace`` seconds end
        it through its lifeline, then kill it; remove its temporary folder. An aborted job's END_RUN must not wait
        for a process that is still busy."""
        process = self._process
        if process is not None and process.poll() is None:
            try:
                self._channel.send_bytes(json.dumps({"id": 0, "method": "stop", "params": {}}).encode())
                process.wait(timeout=grace)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self._lifeline is not None:
            os.close(self._lifeline)  # the process ends at once when its lifeline ends
            self._lifeline = None
        if process is not None and process.poll() is None:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    # -- helpers ---------------------------------------------------------------------------------

    def _exchange_file(self, name: str) -> str:
        assert self._temp_dir is not None
        return os.path.join(self._temp_dir, "exchange", name)

    def _require_lifeline(self) -> int:
        assert self._lifeline is not None
        return self._lifeline

    def _died(self, method: str) -> SiteTaskFailed:
        code = None if self._process is None else self._process.poll()
        return SiteTaskFailed(
            SiteFailure.refusal(
                method, "site_process_died", f"the site's confined process is gone (exit code {code}); see the site log"
            )
        )

    def _relay_log(self) -> None:
        """Each line the confined process writes goes into the site's log, at the level it was logged at."""
        process = self._process
        assert process is not None and process.stdout is not None
        child_logger = logging.getLogger("clara_fl.fl.site.confined")
        for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if not line:
                continue
            level, _, rest = line.partition(" ")
            if level in _LEVELS:
                child_logger.log(getattr(logging, level), rest)
            else:
                child_logger.info(line)


def _forward_metric(event: dict[str, Any], on_metric: Callable[[str, float, int], None] | None) -> None:
    tag, value, step = event.get("tag"), event.get("value"), event.get("step")
    if (
        on_metric is None
        or not isinstance(tag, str)
        or not isinstance(value, (int, float))
        or not isinstance(step, int)
    ):
        return
    on_metric(tag, float(value), step)


def settings_dict(settings: TrainingSettings | ValidationSettings) -> dict[str, Any]:
    """The settings as the JSON a request carries."""
    return dataclasses.asdict(settings)


# -- one process per job and site ----------------------------------------------------------------

_open: dict[str, SiteProcess] = {}
_open_lock = threading.Lock()


def open_site(spec: SiteProcessSpec) -> SiteBackend:
    """The running confined process of this job's app folder, started if there is none (the Learner and the
    Validator of a job share it; a Learner that FLARE builds anew finds it).

    Raises:
        ConfinementUnavailable: the site requires confinement and this machine cannot give it.
    """
    with _open_lock:
        process = _open.get(spec.app_dir)
        if process is not None and process.alive and (process.spec.ddp or not spec.ddp):
            return process  # the Validator's spec never asks for DDP; the Learner's may
        if process is not None:
            process.stop()
        process = SiteProcess(spec)
        process.start()
        _open[spec.app_dir] = process
        return process


def close_site(app_dir: str) -> None:
    """Stop the confined process of this app folder, if any."""
    with _open_lock:
        process = _open.pop(app_dir, None)
    if process is not None:
        process.stop()


@atexit.register
def _close_all() -> None:
    for app_dir in list(_open):
        close_site(app_dir)


# -- the confined process's side ----------------------------------------------------------------


class _Channel:
    """The confined process's end of the socket pair: JSON messages, one writer at a time."""

    def __init__(self, fd: int) -> None:
        from multiprocessing.connection import Connection

        self.connection = Connection(fd)
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.connection.send_bytes(json.dumps(message).encode())

    def receive(self) -> dict[str, Any]:
        message = json.loads(self.connection.recv_bytes())
        if not isinstance(message, dict):
            raise ValueError("a request must be a JSON object")
        return message


def _watch_lifeline(fd: int, aborted: set[int], temp_dir: str) -> None:
    """Abort requests arrive here; the end of the pipe means the FLARE process is gone: end at once."""
    while True:
        data = os.read(fd, _ABORT.size)
        if len(data) < _ABORT.size:
            # A FLARE process that is killed, or ends without END_RUN (the simulator's one-thread mode), cannot
            # remove this process's temporary folder: its payloads (18 MB a task for the spleen UNet) would stay
            # in /tmp for good. Its contents go; the folder itself stays (empty) where the confinement cannot
            # write to its parent. serve() removes it too, for when the channel's end is seen first.
            shutil.rmtree(temp_dir, ignore_errors=True)
            os._exit(3)  # no FLARE process to report to; the job's files stay as the last round left them
        aborted.add(_ABORT.unpack(data)[0])


def _serve(channel: _Channel, exchange: str, service: SiteService, aborted: set[int]) -> None:
    from clara_fl.fl.site.exchange import read_payload, write_payload

    def emit(tag: str, value: float, step: int) -> None:
        channel.send({"event": "metric", "tag": tag, "value": value, "step": step})

    while True:
        try:
            request = channel.receive()
        except EOFError:
            return
        request_id, method = int(request.get("id", 0)), str(request.get("method"))
        if method == "stop":
            return
        reply: dict[str, Any] = {"id": request_id, "ok": True}
        try:
            payload = read_payload(request["payload"]) if request.get("payload") else None
            params = dict(request.get("params") or {})
            result, out = service.handle(
                method, params, payload, functools.partial(set.__contains__, aborted, request_id), emit
            )
            reply["result"] = result
            if out is not None:
                path = os.path.join(exchange, "exchange", f"reply-{request_id}.pt")
                write_payload(path, out)
                reply["payload"] = path
        except SiteTaskFailed as e:
            logger.error(e.failure.local_text())
            reply.update(ok=False, failure=e.failure.to_record(), return_code=e.return_code)
        except Exception as e:  # a bug or a bad request: the parent gets its kind, the site log the whole story
            logger.error("site task '%s' failed", method, exc_info=True)
            failure = SiteFailure.from_exception(method, e, None)
            reply.update(ok=False, failure=failure.to_record(), return_code=EXECUTION_EXCEPTION)
        finally:
            aborted.discard(request_id)
        channel.send(reply)


def serve(argv: list[str], confinement: str) -> None:
    """The confined process, once confined (:mod:`clara_fl.fl.site.confined`): serve the FLARE process's
    requests until it says stop or is gone.

    Args:
        argv: ``--channel-fd FD --lifeline-fd FD --exchange DIR``.
        confinement: what the confinement enforces, for the site's log.
    """
    parser = argparse.ArgumentParser(description="A job's confined process at an FL site (started by clara-fl)")
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    parser.add_argument("--exchange", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logger.info("confined process for %s: %s", os.getcwd(), confinement)
    aborted: set[int] = set()
    threading.Thread(target=_watch_lifeline, args=(args.lifeline_fd, aborted, args.exchange), daemon=True).start()
    service = SiteService()
    try:
        _serve(_Channel(args.channel_fd), args.exchange, service, aborted)
    finally:
        service.close()  # the site's state is on disk
        # the channel may end before the lifeline does when the FLARE process is gone
        shutil.rmtree(args.exchange, ignore_errors=True)
    logging.shutdown()
    os._exit(0)  # the interpreter's teardown (torch, MONAI) would only delay the job's end
