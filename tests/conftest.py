"""Shared fixtures: tiny synthetic data and throw-away copies of the shipped MMARs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
SPLEEN_MMAR = REPO / "mmars" / "spleen_ct_seg"
REFERENCE = REPO.parent / "shared" / "reference" / "clara-train-examples"

# Small enough for 2 CPU cores: 32^3 volumes, 16^3 crops, no loader workers.
TINY = {"roi_size": [16, 16, 16], "num_workers": 0, "epochs": 1, "num_interval_per_valid": 1}


def tiny_set(**extra: object) -> list[str]:
    """``--set`` arguments for a fast run, JSON-encoding lists."""
    values = {**TINY, **extra}
    return [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory):
    from clara_fl.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), cases=8, sites=2, shape=(32, 32, 32), seed=0)


def copy_mmar(source: Path, destination: Path, data_root: Path, **environment: object) -> Path:
    """Copy an MMAR's config/, commands/, docs/ and point its environment.json at ``data_root``."""
    destination.mkdir(parents=True, exist_ok=True)
    for folder in ("config", "commands", "docs", "custom"):
        if (source / folder).is_dir():
            shutil.copytree(source / folder, destination / folder)
    env_file = destination / "config" / "environment.json"
    env = json.loads(env_file.read_text())
    env.update({"DATA_ROOT": str(data_root), "DATASET_JSON": str(data_root / "dataset.json"), **environment})
    env_file.write_text(json.dumps(env, indent=2))
    return destination


@pytest.fixture
def spleen_mmar(tmp_path: Path, synthetic_data) -> Path:
    return copy_mmar(SPLEEN_MMAR, tmp_path / "spleen_ct_seg", synthetic_data.root)


@pytest.fixture(scope="session")
def trained_spleen(tmp_path_factory: pytest.TempPathFactory, synthetic_data) -> Path:
    """A spleen MMAR trained for one epoch, shared read-only by validation/export tests."""
    from clara_fl.cli import main

    mmar = copy_mmar(SPLEEN_MMAR, tmp_path_factory.mktemp("trained") / "spleen_ct_seg", synthetic_data.root)
    assert main(["train", "-m", str(mmar), "--write_train_stats", "--set", *tiny_set()]) == 0
    return mmar


def site_ctx(app_dir: Path, workspace: Path, name: str = "site-1"):
    """The few FLContext methods a Learner uses, backed by a real FLContext."""
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext

    workspace_obj = SimpleNamespace(get_app_dir=lambda job_id: str(app_dir), get_root_dir=lambda: str(workspace))
    ctx = FLContext()
    engine = SimpleNamespace(get_workspace=lambda: workspace_obj, fire_event=lambda *args, **kwargs: None)
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, "job", private=True, sticky=False)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, name, private=True, sticky=False)
    return ctx


@pytest.fixture
def fl_site(tmp_path: Path, synthetic_data):
    """A site workspace whose app folder is the spleen MMAR and whose local/ names the data."""
    workspace = tmp_path / "site-1"
    app = copy_mmar(SPLEEN_MMAR, workspace / "job" / "app_site-1", synthetic_data.root)
    (workspace / "local").mkdir(parents=True)
    (workspace / "local" / "clara_fl_site.json").write_text(
        json.dumps({"environment": {"DATA_ROOT": str(synthetic_data.root)}})
    )
    return app, workspace


@pytest.fixture(autouse=True)
def sites_run_in_this_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Unit tests drive the Learner and the Validator with the site's tasks in the test's process
    (``InProcessSite``), so they can look inside the trainer; tests marked ``site_process`` and the
    end-to-end runs use the real confined process."""
    if request.node.get_closest_marker("e2e") or request.node.get_closest_marker("site_process"):
        yield
        return
    from clara_fl.fl.site import learner
    from clara_fl.fl.site.site_process import InProcessSite

    sites: dict[str, InProcessSite] = {}
    monkeypatch.setattr(learner, "site_backend", lambda spec: sites.setdefault(spec.app_dir, InProcessSite()))
    yield
    for site in sites.values():
        site.stop()


def local_training(learner: object):
    """The site's trainer behind a Learner whose tasks run in this process (``sites_run_in_this_process``)."""
    training = learner.backend.service.training  # type: ignore[attr-defined]
    assert training is not None, "the learner did not build its trainer"
    return training
