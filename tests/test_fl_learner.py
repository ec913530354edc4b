"""The FL face in-process: ClaraLearner, ClaraValidator and ``create_job`` without FLARE's simulator.

Each test gets a site workspace laid out like FLARE's (``<ws>/app_site-1`` holds the job's app, a
copy of the spleen MMAR whose environment.json points at data that does not exist) and a real
``FLContext`` whose engine is a small fake. The site's data comes only from the site file
``<ws>/local/clara_fl_site.json`` (or ``$CLARA_FL_SITE_CONFIG``), with ``{SITE_NAME}`` picking
``dataset_site-1.json``. Volumes are 32^3, crops 16^3, no loader workers: a round takes a second
or two on 2 CPU cores.

The slow end-to-end runs through the simulator live in test_fl_simulation.py.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants, ModelName, ValidateType

from clara_fl.fl.site.context import CODE_POLICY_ENV, SITE_CONFIG_ENV
from clara_fl.fl.site.learner import LOCAL_STATE_FILE, ClaraLearner
from clara_fl.fl.site.weights import network_weights, unwrap
from clara_fl.workflows.network import build_train_network
from clara_fl.workflows.round import RoundSpec
from tests.conftest import SPLEEN_MMAR, copy_mmar, local_training

# poison_one_optimizer_step wraps optimizer.step after the LR scheduler was built; torch notices and warns.
pytestmark = pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden:UserWarning")

SITE = "site-1"
JOB_ID = "site-1"
# The job's --set values: 16^3 crops, no loader workers, validate every epoch.
OVERRIDES: dict[str, Any] = {"roi_size": [16, 16, 16], "num_workers": 0, "num_interval_per_valid": 1}
METRIC_NAMES = {"val_mean_dice", "val_acc"}
REFERENCE_BYOC = Path(__file__).resolve().parent / "reference_byoc"


# -- a FLARE site without FLARE ------------------------------------------------------------------


class FakeWorkspace:
    """What the learner asks of FLARE's Workspace: the job's app folder and the site's root."""

    def __init__(self, root: Path, app_dir: Path) -> None:
        self.root, self.app_dir = root, app_dir

    def get_app_dir(self, job_id: str) -> str:
        assert job_id == JOB_ID, f"asked for the app folder of job {job_id!r}"
        return str(self.app_dir)

    def get_root_dir(self) -> str:
        return str(self.root)


class FakeEngine:
    """get_workspace for the learner, components for LearnerExecutor, fire_event for FLComponent logging."""

    def __init__(self, workspace: FakeWorkspace, components: dict[str, Any] | None = None) -> None:
        self.workspace = workspace
        self.components = dict(components or {})
        self.events: list[str] = []

    def get_workspace(self) -> FakeWorkspace:
        return self.workspace

    def get_component(self, component_id: str) -> Any:
        return self.components.get(component_id)

    def get_all_components(self) -> dict[str, Any]:
        return dict(self.components)

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        self.events.append(event_type)


@dataclass
class Site:
    root: Path  # the site workspace
    app: Path  # the job's app folder: the MMAR
    data: Any  # conftest's SyntheticDataset
    engine: FakeEngine
    ctx: FLContext

    def learner(self, overrides: dict[str, Any] | None = None, **kwargs: Any) -> ClaraLearner:
        """A ClaraLearner initialized on this site, with the test's crop size on top of ``overrides``."""
        learner = ClaraLearner(overrides={**OVERRIDES, **(overrides or {})}, **kwargs)
        learner.initialize({}, self.ctx)
        local_training(learner)  # the learner built its trainer
        return learner

    def global_weights(self, **overrides: Any) -> dict[str, np.ndarray]:
        """The server's initial model, built from the app folder as ClaraModelPersistor does."""
        return network_weights(build_train_network(str(self.app), overrides={**OVERRIDES, **overrides}))

    def site_datalist(self) -> dict[str, Any]:
        return json.loads((self.data.root / f"dataset_{SITE}.json").read_text())

    def epoch_length(self) -> int:
        """Iterations per epoch at this site, from its datalist and the train dataloader's batch size."""
        config = json.loads((self.app / "config" / "config_train.json").read_text())
        batch_size = config["train"]["dataloader"]["args"]["batch_size"]
        return math.ceil(len(self.site_datalist()["training"]) / batch_size)


def make_context(engine: FakeEngine) -> FLContext:
    ctx = FLContext()
    ctx.put(ReservedKey.ENGINE, engine, private=True, sticky=False)
    ctx.put(ReservedKey.RUN_NUM, JOB_ID, private=True, sticky=False)
    ctx.put(ReservedKey.IDENTITY_NAME, SITE, private=True, sticky=False)
    return ctx


def write_site_file(path: Path, data_root: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    environment = {"DATA_ROOT": str(data_root), "DATASET_JSON": str(data_root) + "/dataset_{SITE_NAME}.json"}
    path.write_text(json.dumps({"environment": environment}))
    return path


@pytest.fixture
def site(tmp_path: Path, synthetic_data, monkeypatch: pytest.MonkeyPatch) -> Site:
    """A site workspace whose job app is the spleen MMAR and whose data is named only by its site file."""
    monkeypatch.delenv(SITE_CONFIG_ENV, raising=False)
    monkeypatch.delenv(CODE_POLICY_ENV, raising=False)
    root = tmp_path / "ws"
    # The job carries no data: its environment.json names a folder that does not exist.
    app = copy_mmar(SPLEEN_MMAR, root / f"app_{SITE}", tmp_path / "job_has_no_data")
    write_site_file(root / "local" / "clara_fl_site.json", synthetic_data.root)
    engine = FakeEngine(FakeWorkspace(root, app))
    return Site(root=root, app=app, data=synthetic_data, engine=engine, ctx=make_context(engine))


def train_task(weights: dict[str, Any], current_round: int = 0, kind: str = DataKind.WEIGHTS) -> Shareable:
    task = DXO(data_kind=kind, data=weights).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, current_round)
    return task


def checkpoint_weights(path: Path) -> dict[str, np.ndarray]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in state["model"].items()}


def assert_same_weights(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def first_float_weight(weights: dict[str, np.ndarray]) -> str:
    return next(k for k, v in weights.items() if k.endswith(".weight") and v.dtype == np.float32 and v.ndim > 1)


def files_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()} if folder.is_dir() else {}


# -- the site's set-up ---------------------------------------------------------------------------


def test_site_data_comes_from_the_site_file_with_the_site_name_filled_in(site: Site) -> None:
    learner = site.learner()

    assert learner.site.site_file == str(site.root / "local" / "clara_fl_site.json")
    assert learner.site.app_dir == str(site.app)
    datalist = site.site_datalist()
    assert len(local_training(learner).workflow.trainer.data_loader.dataset) == len(datalist["training"]) == 3
    assert len(local_training(learner).workflow.evaluator.data_loader.dataset) == len(datalist["validation"])


def test_clara_fl_site_config_variable_wins_over_the_local_site_file(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workspace's own site file now names data that does not exist: the learner cannot build ...
    write_site_file(site.root / "local" / "clara_fl_site.json", tmp_path / "wrong_data")
    broken = ClaraLearner(overrides=OVERRIDES)
    broken.initialize({}, site.ctx)
    reply = broken.train(train_task(site.global_weights()), site.ctx, Signal())
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION

    # ... until $CLARA_FL_SITE_CONFIG names a good one.
    env_file = write_site_file(tmp_path / "elsewhere" / "my_site.json", site.data.root)
    monkeypatch.setenv(SITE_CONFIG_ENV, str(env_file))
    learner = site.learner()
    assert learner.site.site_file == str(env_file)
    assert len(local_training(learner).workflow.trainer.data_loader.dataset) == len(site.site_datalist()["training"])
    reply = learner.train(train_task(site.global_weights()), site.ctx, Signal())
    assert reply.get_return_code() == ReturnCode.OK


# -- train ---------------------------------------------------------------------------------------


def test_train_sends_the_weight_diff_and_the_real_number_of_iterations(site: Site) -> None:
    learner = site.learner()
    sent = site.global_weights()

    reply = learner.train(train_task(sent), site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.OK
    dxo = from_shareable(reply)
    assert dxo.data_kind == DataKind.WEIGHT_DIFF
    assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == site.epoch_length() * 1  # local_epochs=1
    assert local_training(learner).workflow.trainer.state.iteration == site.epoch_length()
    local = network_weights(local_training(learner).workflow.network)
    assert set(dxo.data) == set(sent) == set(local)
    for key, diff in dxo.data.items():
        np.testing.assert_allclose(sent[key] + diff, local[key], rtol=0, atol=1e-6, err_msg=key)
    key = first_float_weight(sent)
    assert np.abs(dxo.data[key]).max() > 0, "training did not move the weights"
    local_training(learner).local_state.wait()  # written in the background while the update travels
    assert torch.load(site.app / "models" / LOCAL_STATE_FILE, weights_only=True)["iteration"] == site.epoch_length()

    # Round 2 starts from the server's weights again and reports its own iterations.
    reply = learner.train(train_task(sent, current_round=1), site.ctx, Signal())
    assert reply.get_return_code() == ReturnCode.OK
    assert from_shareable(reply).get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == site.epoch_length()
    assert from_shareable(reply).get_meta_prop(AppConstants.CURRENT_ROUND) == 1, "result filters count per round"
    assert local_training(learner).workflow.trainer.state.epoch == 2


def test_train_sends_full_weights_when_send_weight_diff_is_false(site: Site) -> None:
    learner = site.learner(send_weight_diff=False)
    sent = site.global_weights()

    reply = learner.train(train_task(sent), site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.OK
    dxo = from_shareable(reply)
    assert dxo.data_kind == DataKind.WEIGHTS
    assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == site.epoch_length()
    assert_same_weights(dxo.data, network_weights(local_training(learner).workflow.network))


def test_steps_aggregation_runs_exactly_that_many_iterations(site: Site) -> None:
    learner = site.learner(steps_aggregation=3)
    assert 3 > site.epoch_length(), "the round must cross an epoch boundary"

    reply = learner.train(train_task(site.global_weights()), site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.OK
    assert from_shareable(reply).get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 3
    assert local_training(learner).workflow.trainer.state.iteration == 3


def test_steps_aggregation_smaller_than_an_epoch_still_completes_epochs(site: Site) -> None:
    learner = site.learner(steps_aggregation=1)
    weights = site.global_weights()
    epoch_length = site.epoch_length()
    assert epoch_length >= 2

    for current_round in range(epoch_length):  # together: exactly one epoch of iterations
        reply = learner.train(train_task(weights, current_round), site.ctx, Signal())
        assert from_shareable(reply).get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 1

    state = local_training(learner).workflow.trainer.state
    assert state.iteration == epoch_length
    assert state.epoch == 1, (
        f"{state.iteration} iterations of a {epoch_length}-iteration epoch counted as {state.epoch} epochs"
    )
    assert (site.app / "models" / "model.pt").is_file(), "the epoch-end validation never ran"


def test_missing_and_extra_global_keys_are_tolerated_but_a_wrong_shape_is_bad_task_data(site: Site) -> None:
    learner = site.learner()
    full = site.global_weights()
    dropped = first_float_weight(full)
    partial = {k: v for k, v in full.items() if k != dropped}
    partial["server_only.weight"] = np.ones(3, dtype=np.float32)

    reply = learner.train(train_task(partial), site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.OK
    dxo = from_shareable(reply)
    assert set(dxo.data) == set(full) - {dropped}, "the diff covers exactly the keys the server sent and the site has"
    assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == site.epoch_length()

    before = network_weights(local_training(learner).workflow.network)
    iteration = local_training(learner).workflow.trainer.state.iteration
    wrong = dict(full)
    wrong[dropped] = np.zeros((1, *full[dropped].shape), dtype=np.float32)
    reply = learner.train(train_task(wrong, current_round=1), site.ctx, Signal())  # no exception

    assert reply.get_return_code() == ReturnCode.BAD_TASK_DATA
    with pytest.raises(ValueError):
        from_shareable(reply)
    assert local_training(learner).workflow.trainer.state.iteration == iteration, "nothing was trained"
    assert_same_weights(network_weights(local_training(learner).workflow.network), before)  # nothing half-loaded


# -- abort ---------------------------------------------------------------------------------------


def test_abort_stops_training_after_the_current_iteration_and_the_next_round_starts_a_fresh_epoch(site: Site) -> None:
    from ignite.engine import Events

    learner = site.learner(local_epochs=50)
    trainer = local_training(learner).workflow.trainer
    weights = site.global_weights()
    epoch_length = site.epoch_length()
    signal = Signal()

    # an aborted signal is answered at once, without training
    triggered = Signal()
    triggered.trigger("before the round")
    assert learner.train(train_task(weights), site.ctx, triggered).get_return_code() == ReturnCode.TASK_ABORTED
    assert trainer.state.iteration == 0

    fired: dict[str, Any] = {}
    iterations: list[int] = []

    def abort_from_another_thread(engine: Any) -> None:
        iterations.append(engine.state.iteration)
        if len(iterations) == epoch_length and not fired:  # the last iteration of epoch 1
            timer = threading.Timer(0.0, signal.trigger, args=("server asked to abort",))
            timer.start()
            timer.join()
            fired.update(iteration=engine.state.iteration, at=time.monotonic())

    trainer.add_event_handler(Events.ITERATION_COMPLETED, abort_from_another_thread)
    reply = learner.train(train_task(weights), site.ctx, signal)
    stopped_after = time.monotonic() - fired["at"]
    trainer.remove_event_handler(abort_from_another_thread, Events.ITERATION_COMPLETED)

    assert reply.get_return_code() == ReturnCode.TASK_ABORTED
    with pytest.raises(ValueError):
        from_shareable(reply)
    assert len(iterations) == fired["iteration"] + 1, "training went on past the iteration in progress"
    assert len(iterations) < epoch_length * 50
    assert stopped_after < 30
    # the interrupted epoch 2 is dropped: the state is back at the end of epoch 1
    assert (trainer.state.epoch, trainer.state.iteration) == (1, epoch_length)

    starts: list[tuple[int, int]] = []
    record_start = lambda engine: starts.append((engine.state.epoch, engine.state.iteration))  # noqa: E731
    trainer.add_event_handler(Events.STARTED, record_start)
    local_training(learner).spec = RoundSpec(local_epochs=1)
    reply = learner.train(train_task(weights, current_round=1), site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.OK
    assert len(starts) == 1 and starts[0][1] % epoch_length == 0, f"round started mid-epoch at {starts[0]}"
    assert from_shareable(reply).get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == epoch_length
    assert trainer.state.iteration == starts[0][1] + epoch_length
    assert trainer.state.iteration % epoch_length == 0


# -- NaN -----------------------------------------------------------------------------------------


def test_a_round_that_ends_with_nan_weights_is_refused_and_sends_nothing(site: Site) -> None:
    learner = site.learner()
    weights = site.global_weights()
    key = first_float_weight(weights)
    weights[key] = np.full_like(weights[key], np.nan)

    reply = learner.train(train_task(weights), site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    with pytest.raises(ValueError):
        from_shareable(reply)
    learner.finalize(site.ctx)
    kept = torch.load(site.app / "models" / LOCAL_STATE_FILE, weights_only=True)
    assert kept["iteration"] == 0, "a refused round must leave no state for the next rebuild"
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def poison_one_optimizer_step(learner: ClaraLearner, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next optimizer step leaves NaN in one parameter (a local divergence), later steps are normal."""
    optimizer = local_training(learner).workflow.trainer.optimizer
    real_step = optimizer.step
    done: list[bool] = []

    def step(*args: Any, **kwargs: Any) -> Any:
        result = real_step(*args, **kwargs)
        if not done:
            done.append(True)
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(optimizer, "step", step)


def test_a_local_divergence_is_refused(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    learner = site.learner()
    poison_one_optimizer_step(learner, monkeypatch)

    reply = learner.train(train_task(site.global_weights()), site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    with pytest.raises(ValueError):
        from_shareable(reply)


def test_after_a_refused_nan_round_the_next_round_with_good_weights_trains(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner = site.learner()
    weights = site.global_weights()
    poison_one_optimizer_step(learner, monkeypatch)
    assert learner.train(train_task(weights), site.ctx, Signal()).get_return_code() == ReturnCode.EXECUTION_EXCEPTION

    reply = learner.train(train_task(weights, current_round=1), site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.OK


def test_a_refused_round_rolls_the_site_back_to_the_state_after_the_last_accepted_round(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner = site.learner()
    weights = site.global_weights()
    assert learner.train(train_task(weights), site.ctx, Signal()).get_return_code() == ReturnCode.OK
    trainer = local_training(learner).workflow.trainer
    accepted = {k: v.clone() for k, v in unwrap(local_training(learner).workflow.network).state_dict().items()}
    best = local_training(learner).workflow.evaluator.state.best_metric

    poison_one_optimizer_step(learner, monkeypatch)
    assert (
        learner.train(train_task(weights, current_round=1), site.ctx, Signal()).get_return_code()
        == ReturnCode.EXECUTION_EXCEPTION
    )

    assert (trainer.state.epoch, trainer.state.iteration) == (1, site.epoch_length())
    steps = [int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()]
    assert steps and all(s == site.epoch_length() for s in steps), "Adam's moments are those of the accepted round"
    assert all(torch.isfinite(v).all() for v in trainer.optimizer.state_dict()["state"][0].values())
    restored = unwrap(local_training(learner).workflow.network).state_dict()
    assert all(torch.equal(restored[k], v) for k, v in accepted.items())
    assert local_training(learner).workflow.evaluator.state.best_metric == best


def test_submit_model_never_hands_out_the_weights_of_a_refused_nan_round(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner = site.learner()
    poison_one_optimizer_step(learner, monkeypatch)
    assert (
        learner.train(train_task(site.global_weights()), site.ctx, Signal()).get_return_code()
        == ReturnCode.EXECUTION_EXCEPTION
    )

    reply = learner.get_model_for_validation(ModelName.BEST_MODEL, site.ctx)

    if reply.get_return_code() == ReturnCode.OK:
        submitted = from_shareable(reply).data
        assert all(np.isfinite(v).all() for v in submitted.values() if np.issubdtype(v.dtype, np.floating))


# -- validate ------------------------------------------------------------------------------------


def validate_task(weights: dict[str, Any], validate_type: str) -> Shareable:
    task = DXO(data_kind=DataKind.WEIGHTS, data=weights).to_shareable()
    task.set_header(AppConstants.VALIDATE_TYPE, validate_type)
    return task


def test_before_train_validate_returns_a_dict_of_metrics_and_leaves_local_model_selection_alone(site: Site) -> None:
    learner = site.learner()

    reply = learner.validate(
        validate_task(site.global_weights(), ValidateType.BEFORE_TRAIN_VALIDATE), site.ctx, Signal()
    )

    assert reply.get_return_code() == ReturnCode.OK
    dxo = from_shareable(reply)
    assert dxo.data_kind == DataKind.METRICS
    assert set(dxo.data) == {MetaKey.INITIAL_METRICS}
    metrics = dxo.data[MetaKey.INITIAL_METRICS]
    assert isinstance(metrics, dict) and set(metrics) == METRIC_NAMES
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in metrics.values())
    assert not (site.app / "models" / "model.pt").exists(), "validation must not select a local model"
    assert local_training(learner).workflow.evaluator.state.best_metric_epoch == -1


def test_the_final_global_model_validated_after_the_last_round_is_offered_to_the_kept_model(site: Site) -> None:
    from clara_fl.fl.site.keep_better import KEPT_MODEL_FILE
    from clara_fl.runtime import events as ev
    from clara_fl.runtime.checkpoint import load_checkpoint, save_atomic

    learner = site.learner(keep_better_model=True)
    learner.train(train_task(site.global_weights()), site.ctx, Signal())
    kept_file = site.app / "models" / KEPT_MODEL_FILE
    saved = load_checkpoint(str(kept_file))
    save_atomic({**saved, "score": -1.0}, str(kept_file))  # any model beats the one kept in the round
    final = validate_task(site.global_weights(), ValidateType.MODEL_VALIDATE)
    final.set_header(AppConstants.CURRENT_ROUND, 1)  # the round after the last, as the server sends it

    reply = learner.validate(final, site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.OK
    [choice] = [
        e for e in ev.read_events(site.app / ev.SITE_EVENTS_FILE) if e.kind == ev.SITE_MODEL_KEPT and e.round == 1
    ]
    numbers = choice.numbers()
    assert numbers["kept"] == 1
    assert numbers["global"] == from_shareable(reply).data["val_mean_dice"]  # the validation's own score, reused
    assert numbers["kept_score"] == max(numbers["global"], numbers["personalized"])
    assert load_checkpoint(str(kept_file))["score"] == numbers["kept_score"]


def test_keeping_the_better_model_leaves_the_random_generators_to_the_training(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring two models runs the evaluator's data loader, which draws from torch's generator: without care the
    site's next round would shuffle and crop differently, and send another model, for having kept one."""
    import torch

    import clara_fl.fl.site.keep_better as keep_better

    before_keeping: list[torch.Tensor] = []
    original = keep_better.keep_better_after_round

    def recorded(*args: Any, **kwargs: Any) -> Any:
        before_keeping.append(torch.random.get_rng_state())
        return original(*args, **kwargs)

    monkeypatch.setattr(keep_better, "keep_better_after_round", recorded)
    learner = site.learner(keep_better_model=True)

    learner.train(train_task(site.global_weights()), site.ctx, Signal())

    assert len(before_keeping) == 1
    assert torch.equal(torch.random.get_rng_state(), before_keeping[0])


def test_a_validation_before_a_round_offers_nothing_to_the_kept_model(site: Site) -> None:
    from clara_fl.runtime import events as ev

    learner = site.learner(keep_better_model=True)

    learner.validate(validate_task(site.global_weights(), ValidateType.BEFORE_TRAIN_VALIDATE), site.ctx, Signal())

    events = ev.read_events(site.app / ev.SITE_EVENTS_FILE) if (site.app / ev.SITE_EVENTS_FILE).exists() else []
    assert [e for e in events if e.kind == ev.SITE_MODEL_KEPT] == []


def test_learner_executor_puts_the_before_train_metrics_dict_into_the_train_result(site: Site) -> None:
    from nvflare.app_common.executors.learner_executor import LearnerExecutor

    learner = ClaraLearner(overrides=OVERRIDES)
    site.engine.components["clara_learner"] = learner
    executor = LearnerExecutor(learner_id="clara_learner")
    weights = site.global_weights()

    reply = executor.execute("train", train_task(weights), site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.OK
    dxo = from_shareable(reply)
    assert dxo.data_kind == DataKind.WEIGHT_DIFF
    assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == site.epoch_length()
    initial = dxo.get_meta_prop(MetaKey.INITIAL_METRICS)
    assert isinstance(initial, dict) and set(initial) == METRIC_NAMES

    # the same dict the learner gives for these weights; asking again changes no model file
    models = site.app / "models"
    local_training(learner).local_state.wait()
    before = files_state(models)
    assert "model.pt" in before
    best = (
        local_training(learner).workflow.evaluator.state.best_metric,
        local_training(learner).workflow.evaluator.state.best_metric_epoch,
    )
    again = learner.validate(validate_task(weights, ValidateType.BEFORE_TRAIN_VALIDATE), site.ctx, Signal())
    assert from_shareable(again).data[MetaKey.INITIAL_METRICS] == pytest.approx(initial, rel=1e-5)
    assert files_state(models) == before
    assert (
        local_training(learner).workflow.evaluator.state.best_metric,
        local_training(learner).workflow.evaluator.state.best_metric_epoch,
    ) == best

    # the validate task (model_validate): plain metrics, and the site's trained weights are restored
    trained = network_weights(local_training(learner).workflow.network)
    reply = executor.execute(
        "validate", DXO(data_kind=DataKind.WEIGHTS, data=weights).to_shareable(), site.ctx, Signal()
    )
    assert reply.get_return_code() == ReturnCode.OK
    metrics = from_shareable(reply)
    assert metrics.data_kind == DataKind.METRICS and set(metrics.data) == METRIC_NAMES
    assert_same_weights(network_weights(local_training(learner).workflow.network), trained)
    assert files_state(models) == before


# -- submit_model --------------------------------------------------------------------------------


def test_submit_model_sends_the_best_local_checkpoint_after_a_round(site: Site) -> None:
    learner = site.learner()
    assert learner.train(train_task(site.global_weights()), site.ctx, Signal()).get_return_code() == ReturnCode.OK
    best = site.app / "models" / "model.pt"
    assert best.is_file(), "the round's validation selects model.pt"
    expected = checkpoint_weights(best)

    for name in (None, ModelName.BEST_MODEL):
        reply = learner.get_model_for_validation(name, site.ctx)
        assert reply.get_return_code() == ReturnCode.OK
        dxo = from_shareable(reply)
        assert dxo.data_kind == DataKind.WEIGHTS
        assert_same_weights(dxo.data, expected)

    final = from_shareable(learner.get_model_for_validation(ModelName.FINAL_MODEL, site.ctx))
    assert_same_weights(final.data, checkpoint_weights(site.app / "models" / "final_model.pt"))


def test_submit_model_without_any_checkpoint_sends_the_network_weights(site: Site) -> None:
    learner = site.learner()
    assert not (site.app / "models").exists() or not list((site.app / "models").glob("*.pt"))

    reply = learner.get_model_for_validation(None, site.ctx)

    assert reply.get_return_code() == ReturnCode.OK
    dxo = from_shareable(reply)
    assert dxo.data_kind == DataKind.WEIGHTS
    assert_same_weights(dxo.data, network_weights(local_training(learner).workflow.network))


# -- a train CheckpointLoader --------------------------------------------------------------------


def test_a_train_checkpoint_loader_never_overwrites_the_global_weights(site: Site) -> None:
    from monai.handlers import CheckpointLoader

    overrides = {"dont_load_ckpt_model": False, "learning_rate": 0}
    weights = site.global_weights(**overrides)
    (site.app / "models").mkdir()
    torch.save(
        {"model": {k: torch.zeros_like(torch.as_tensor(v)) for k, v in weights.items()}},
        site.app / "models" / "model.pt",
    )
    learner = site.learner(overrides=overrides, send_weight_diff=False)
    # the override enables the config's CheckpointLoader; the Learner switches it off before building, as MONAI's
    # FL client does, so no loader exists to fire
    loaders = [
        h for h in local_training(learner).workflow.resolver.get("handlers", "train") if isinstance(h, CheckpointLoader)
    ]
    assert loaders == []

    reply = learner.train(train_task(weights), site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.OK
    returned = from_shareable(reply).data
    parameters = [name for name, _ in local_training(learner).workflow.network.named_parameters()]
    assert parameters
    for name in parameters:  # learning rate 0: parameters stay the server's (BatchNorm buffers do move)
        np.testing.assert_array_equal(returned[name], weights[name], err_msg=name)
    assert any(np.abs(returned[name]).max() > 0 for name in parameters), "the zero checkpoint was loaded"


# -- a learner rebuilt per task (simulator -t 1) -------------------------------------------------


def test_a_rebuilt_learner_resumes_the_local_state_from_disk(site: Site) -> None:
    weights = site.global_weights()
    first = site.learner()
    reply_a = from_shareable(first.train(train_task(weights), site.ctx, Signal()))
    state_a, best_a = (
        local_training(first).workflow.trainer.state,
        local_training(first).workflow.evaluator.state.best_metric,
    )
    first.finalize(site.ctx)  # FLARE ends the task's run before it builds the next learner

    second = site.learner()  # a new learner on the same app folder, as FLARE builds for the next task
    trainer = local_training(second).workflow.trainer
    assert (
        (trainer.state.epoch, trainer.state.iteration) == (state_a.epoch, state_a.iteration) == (1, site.epoch_length())
    )
    assert local_training(second).workflow.evaluator.state.best_metric == pytest.approx(best_a)
    steps = [s["step"] for s in trainer.optimizer.state_dict()["state"].values()]
    assert steps and all(int(s) == site.epoch_length() for s in steps), "the optimizer state was resumed"

    reply = second.train(train_task(weights, current_round=1), site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.OK
    reply_b = from_shareable(reply)
    assert reply_b.data_kind == reply_a.data_kind == DataKind.WEIGHT_DIFF
    assert {k: v.shape for k, v in reply_b.data.items()} == {k: v.shape for k, v in reply_a.data.items()}
    assert reply_b.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == reply_a.get_meta_prop(
        MetaKey.NUM_STEPS_CURRENT_ROUND
    )
    assert (trainer.state.epoch, trainer.state.iteration) == (2, 2 * site.epoch_length())


# -- cross-site validation -----------------------------------------------------------------------


def test_validator_scores_a_model_by_its_owner_from_header_or_meta(site: Site) -> None:
    from clara_fl.fl.site.validator import ClaraValidator

    validator = ClaraValidator(overrides=OVERRIDES)
    weights = site.global_weights()
    cross_val = site.app / "eval" / "cross_site_val"

    # CrossSiteModelEval: the owner is in the task header
    task = DXO(data_kind=DataKind.WEIGHTS, data=weights).to_shareable()
    task.set_header(AppConstants.MODEL_OWNER, "SRV_FL_global_model.pt")
    reply = validator.execute(AppConstants.TASK_VALIDATION, task, site.ctx, Signal())
    assert reply.get_return_code() == ReturnCode.OK
    by_header = from_shareable(reply)
    assert by_header.data_kind == DataKind.METRICS
    assert set(by_header.data) == METRIC_NAMES
    assert (cross_val / "SRV_FL_global_model.pt" / "metrics.csv").is_file()

    # CrossSiteEval: the owner is in the DXO meta
    task = DXO(data_kind=DataKind.WEIGHTS, data=weights, meta={AppConstants.MODEL_OWNER: "site-2"}).to_shareable()
    reply = validator.execute(AppConstants.TASK_VALIDATION, task, site.ctx, Signal())
    assert reply.get_return_code() == ReturnCode.OK
    assert from_shareable(reply).data == pytest.approx(by_header.data, rel=1e-5)
    assert (cross_val / "site-2" / "metrics.csv").is_file()
    assert sorted(p.name for p in cross_val.iterdir()) == ["SRV_FL_global_model.pt", "site-2"]


def test_validator_without_a_cross_validation_config_derives_one(site: Site) -> None:
    from clara_fl.fl.site.validator import ClaraValidator

    (site.app / "config" / "config_cross_validation.json").unlink()
    task = DXO(data_kind=DataKind.WEIGHTS, data=site.global_weights()).to_shareable()
    task.set_header(AppConstants.MODEL_OWNER, "site-1")

    reply = ClaraValidator(overrides=OVERRIDES).execute(AppConstants.TASK_VALIDATION, task, site.ctx, Signal())

    assert reply.get_return_code() == ReturnCode.OK
    dxo = from_shareable(reply)
    assert dxo.data_kind == DataKind.METRICS and set(dxo.data) == METRIC_NAMES
    assert (site.app / "eval" / "cross_site_val" / "site-1" / "metrics.csv").is_file()


def test_validator_refuses_anything_but_weights(site: Site) -> None:
    from clara_fl.fl.site.validator import ClaraValidator

    validator = ClaraValidator(overrides=OVERRIDES)
    weights = site.global_weights()
    for task in (
        DXO(data_kind=DataKind.WEIGHT_DIFF, data=weights).to_shareable(),
        DXO(data_kind=DataKind.METRICS, data={"val_mean_dice": 0.5}).to_shareable(),
        Shareable(),
    ):
        assert (
            validator.execute(AppConstants.TASK_VALIDATION, task, site.ctx, Signal()).get_return_code()
            == ReturnCode.BAD_TASK_DATA
        )
    reply = validator.execute("train", DXO(data_kind=DataKind.WEIGHTS, data=weights).to_shareable(), site.ctx, Signal())
    assert reply.get_return_code() == ReturnCode.TASK_UNKNOWN
    assert not (site.app / "eval").exists()


# -- clara-fl job create -------------------------------------------------------------------------


def fed_component(config: dict[str, Any], component_id: str) -> dict[str, Any]:
    found = {c["id"]: c for c in config.get("components", [])}
    found.update({w["id"]: w for w in config.get("workflows", [])})
    found.update({e["executor"]["id"]: e["executor"] for e in config.get("executors", []) if "id" in e["executor"]})
    return found[component_id]


@pytest.mark.parametrize(
    ("template", "workflow", "clients_arg"),
    [("clara_fedavg_cse", "scatter_and_gather", "min_clients"), ("clara_fedavg_cse_mc", "fedavg", "min_clients")],
)
def test_create_job_writes_a_complete_job_from_the_mmar(
    tmp_path: Path, template: str, workflow: str, clients_arg: str
) -> None:
    from clara_fl.recipes.job_folder import create_job

    overrides = {"roi_size": [16, 16, 16], "num_workers": 0}
    job = create_job(
        SPLEEN_MMAR, tmp_path / "job", template, num_rounds=7, local_epochs=4, min_clients=3, overrides=overrides
    )

    meta = json.loads((job / "meta.json").read_text())
    assert meta["min_clients"] == 3 and meta["deploy_map"] == {"app": ["@ALL"]}
    app = job / "app"
    assert sorted(p.name for p in app.iterdir()) == ["config", "docs"], "no models/, eval/ or empty custom/"
    client = json.loads((app / "config" / "config_fed_client.json").read_text())
    server = json.loads((app / "config" / "config_fed_server.json").read_text())
    assert fed_component(client, "clara_learner")["args"]["local_epochs"] == 4
    assert fed_component(server, workflow)["args"]["num_rounds"] == 7
    assert fed_component(server, workflow)["args"][clients_arg] == 3

    mmar_configs = {p.name for p in (SPLEEN_MMAR / "config").iterdir()}
    assert {p.name for p in (app / "config").iterdir()} == mmar_configs | {
        "config_fed_client.json",
        "config_fed_server.json",
    }
    for name in mmar_configs - {"environment.json"}:
        assert (app / "config" / name).read_bytes() == (SPLEEN_MMAR / "config" / name).read_bytes(), name
    environment = json.loads((app / "config" / "environment.json").read_text())
    assert environment == {**json.loads((SPLEEN_MMAR / "config" / "environment.json").read_text()), **overrides}
    if template == "clara_fedavg_cse":
        assert fed_component(server, "model_selector")["args"]["key_metric"] == "val_mean_dice"


def test_create_job_ships_custom_code_only_when_the_mmar_has_some(tmp_path: Path) -> None:
    from clara_fl.recipes.job_folder import create_job

    mmar = tmp_path / "mmar"
    shutil.copytree(SPLEEN_MMAR / "config", mmar / "config")
    (mmar / "custom").mkdir()
    (mmar / "custom" / "README.md").write_text("notes, no code\n")
    # the server selects the best global model by whatever the MMAR validates with
    train_config = json.loads((mmar / "config" / "config_train.json").read_text())
    train_config["validate"]["key_metric"]["log_label"] = "val_spleen_dice"
    (mmar / "config" / "config_train.json").write_text(json.dumps(train_config))

    job = create_job(mmar, tmp_path / "plain_job")
    assert not (job / "app" / "custom").exists()
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    assert fed_component(server, "model_selector")["args"]["key_metric"] == "val_spleen_dice"

    (mmar / "custom" / "net").mkdir()
    shutil.copy(REFERENCE_BYOC / "myNetworkArch.py", mmar / "custom" / "net" / "myNetworkArch.py")
    (mmar / "custom" / "net" / "__pycache__").mkdir()
    (mmar / "custom" / "net" / "__pycache__" / "stale.pyc").write_bytes(b"\0")
    job = create_job(mmar, tmp_path / "byoc_job")
    custom = job / "app" / "custom"
    assert (custom / "net" / "myNetworkArch.py").read_bytes() == (REFERENCE_BYOC / "myNetworkArch.py").read_bytes()
    assert (custom / "README.md").is_file()
    assert not list(custom.rglob("__pycache__")) and not list(custom.rglob("*.pyc"))
