"""The server builds the job's network in a confined child process (clara_fl.fl.server.network_build)
and its persistor keeps only the tensors, loaded with weights_only=True."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext

from clara_fl.fl.server.network_build import BuildRequest, build_network_confined, built_network
from clara_fl.fl.server.persistor import ClaraModelPersistor
from clara_fl.runtime.landlock import landlock_abi
from clara_fl.workflows.network import build_train_network
from tests.conftest import SPLEEN_MMAR, copy_mmar

needs_landlock = pytest.mark.skipif(landlock_abi() == 0, reason="no Landlock in this kernel")


@pytest.fixture(autouse=True)
def no_site_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLARA_FL_SITE_CONFIG", raising=False)
    monkeypatch.delenv("CLARA_FL_CODE_POLICY", raising=False)


@pytest.fixture
def server(tmp_path: Path) -> tuple[Path, Path]:
    """A server workspace with a job whose app folder is the spleen MMAR; (app folder, workspace)."""
    workspace = tmp_path / "server"
    app = copy_mmar(SPLEEN_MMAR, workspace / "job-1" / "app_server", tmp_path / "no-data")
    (workspace / "local").mkdir(parents=True)
    return app, workspace


def write_site_file(workspace: Path, **content: Any) -> None:
    (workspace / "local" / "clara_fl_site.json").write_text(json.dumps({"environment": {}, **content}))


def set_model_argument(app: Path, name: str, value: Any) -> None:
    path = app / "config" / "config_train.json"
    config = json.loads(path.read_text())
    config["train"]["model"]["args"][name] = value
    path.write_text(json.dumps(config))


def shell_payload(marker: Path) -> dict[str, Any]:
    """A component nested in ``train.model.args`` that runs a shell command when it is built."""
    return {"path": "os.system", "args": {"command": f"touch {marker}"}}


def start_run(app: Path, workspace: Path) -> tuple[ClaraModelPersistor, list[str], list[str]]:
    """A ClaraModelPersistor after START_RUN in a server job; (persistor, panics, info lines)."""
    persistor = ClaraModelPersistor()
    panics: list[str] = []
    infos: list[str] = []
    persistor.system_panic = lambda reason, fl_ctx: panics.append(reason)
    persistor.log_info = lambda fl_ctx, msg, fire_event=False: infos.append(msg)
    fl_ctx = FLContext()
    engine = SimpleNamespace(
        get_workspace=lambda: SimpleNamespace(get_root_dir=lambda: str(workspace)), fire_event=lambda *a: None
    )
    fl_ctx.put(ReservedKey.ENGINE, engine, private=True, sticky=False)
    fl_ctx.put(ReservedKey.IDENTITY_NAME, "server", private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.APP_ROOT, str(app), private=True, sticky=False)
    persistor.handle_event(EventType.START_RUN, fl_ctx)
    return persistor, panics, infos


def spleen_request(app: Path, code_policy: str = "restricted") -> BuildRequest:
    return BuildRequest(
        str(app), "config/config_train.json", "config/environment.json", {}, {"SITE_NAME": "server"}, code_policy
    )


# -- the network the server keeps ------------------------------------------------------------------------------


def test_the_spleen_network_built_in_the_child_equals_the_one_built_in_process(server: tuple[Path, Path]) -> None:
    app, _ = server
    expected = build_train_network(str(app), extra_environment={"SITE_NAME": "server"}).state_dict()

    network, _ = build_network_confined(str(app), spleen_request(app))

    state = network.state_dict()
    assert list(state) == list(expected)
    assert all(state[k].dtype == expected[k].dtype and torch.equal(state[k], expected[k]) for k in expected)


def test_the_kept_network_has_the_parameters_and_buffers_of_the_built_one() -> None:
    original = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2))
    original[0].bias.requires_grad_(False)
    parameters = {name: p.requires_grad for name, p in original.named_parameters()}

    kept = built_network(original.state_dict(), parameters, "UNet")

    assert type(kept).__name__ == "UNet"
    assert {n: p.requires_grad for n, p in kept.named_parameters()} == parameters
    assert [n for n, _ in kept.named_buffers()] == [n for n, _ in original.named_buffers()]
    assert list(kept.state_dict()) == list(original.state_dict())


def test_a_name_that_is_not_a_tensor_is_refused() -> None:
    with pytest.raises(ValueError, match="'a.b' is not a tensor"):
        built_network({"a.b": "x"}, {})


def test_a_name_that_is_also_a_submodule_is_refused() -> None:
    state = {"a.b.weight": torch.zeros(1), "a.b": torch.zeros(1)}

    with pytest.raises(ValueError, match="'a.b' appears twice"):
        built_network(state, {})


def test_names_sharing_a_prefix_share_one_submodule() -> None:
    state = {"a.b.weight": torch.zeros(2), "a.b.running_mean": torch.ones(2), "a.c.weight": torch.zeros(1)}

    kept = built_network(state, {"a.b.weight": True, "a.c.weight": False})

    assert [n for n, _ in kept.named_modules()] == ["", "a", "a.b", "a.c"]
    assert [n for n, _ in kept.named_buffers()] == ["a.b.running_mean"]


def test_the_persistor_gives_flare_the_built_networks_weights_and_class_name(server: tuple[Path, Path]) -> None:
    app, workspace = server
    persistor, panics, infos = start_run(app, workspace)

    learnable = persistor.load_model(FLContext())

    expected = build_train_network(str(app), extra_environment={"SITE_NAME": "server"}).state_dict()
    assert panics == []
    assert sorted(learnable["weights"]) == sorted(expected)
    assert all(learnable["weights"][k].shape == tuple(expected[k].shape) for k in expected)
    assert persistor.default_train_conf == {"train": {"model": "UNet"}}
    assert any(
        line.startswith("global model UNet built from config/config_train.json in a separate process") for line in infos
    )


@needs_landlock
def test_the_server_log_says_the_build_ran_confined(server: tuple[Path, Path]) -> None:
    app, workspace = server

    _, _, infos = start_run(app, workspace)

    assert any("(confined by Landlock ABI" in line for line in infos)


# -- a hostile job ------------------------------------------------------------------------------------------------


def test_the_shell_payload_runs_when_the_network_is_built_unconfined(server: tuple[Path, Path], tmp_path: Path) -> None:
    """The control for the next test: the payload is real."""
    app, _ = server
    marker = tmp_path / "owned"
    set_model_argument(app, "dropout", shell_payload(marker))

    build_train_network(str(app), code_policy="full")  # os.system returned 0: dropout=0

    assert marker.exists()


@needs_landlock
def test_a_shell_payload_in_train_model_args_leaves_no_file_even_under_the_full_code_policy(
    server: tuple[Path, Path],
) -> None:
    app, workspace = server
    write_site_file(workspace, code_policy="full")
    marker = Path("/tmp") / f"clara-fl-owned-{uuid.uuid4().hex}"
    set_model_argument(app, "dropout", shell_payload(marker))

    _, panics, _ = start_run(app, workspace)

    assert not marker.exists()
    assert len(panics) == 1 and panics[0].startswith("cannot build the global model: ")


@needs_landlock
def test_a_payload_that_writes_a_file_from_python_is_refused_under_the_full_code_policy(
    server: tuple[Path, Path],
) -> None:
    app, workspace = server
    write_site_file(workspace, code_policy="full")
    target = workspace / "local" / "planted.json"
    set_model_argument(app, "dropout", {"path": "builtins.open", "args": {"file": str(target), "mode": "w"}})

    _, panics, _ = start_run(app, workspace)

    assert not target.exists() and len(panics) == 1


def test_a_failed_build_is_one_line_naming_the_config_item(server: tuple[Path, Path]) -> None:
    app, workspace = server
    set_model_argument(app, "norm", {"name": "NoSuchNorm"})

    persistor, panics, _ = start_run(app, workspace)

    assert len(panics) == 1 and "\n" not in panics[0] and "Traceback" not in panics[0]
    assert panics[0].startswith("cannot build the global model: config/config_train.json: train.model.args.norm")
    assert persistor.model is None


def test_an_unknown_confinement_mode_in_the_server_site_file_is_refused(server: tuple[Path, Path]) -> None:
    app, workspace = server
    write_site_file(workspace, confinement="sometimes")

    _, panics, _ = start_run(app, workspace)

    assert len(panics) == 1 and "clara_fl_site.json: confinement: must be one of required, preferred, off" in panics[0]
