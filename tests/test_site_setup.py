"""``clara-fl site setup``: a FLARE startup kit's local/ folder made ready for clara-fl jobs.

The end-to-end run on a real deployment is test_poc_deployment.py; these tests are fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clara_fl.cli import main
from clara_fl.config.errors import ConfigError
from clara_fl.fl.jobs.allow_list import CLARA_ALLOW_LIST
from clara_fl.fl.jobs.site_setup import find_startup_kit, setup_site
from clara_fl.fl.site.context import code_policy, read_site_file

REPO = Path(__file__).resolve().parents[1]
FLARE_LAUNCHER = {
    "id": "process_launcher",
    "path": "nvflare.app_common.job_launcher.client_process_launcher.ClientProcessJobLauncher",
    "args": {},
}
DEFAULT_RESOURCES = {
    "format_version": 2,
    "class_list_enforcement_mode": "enforce",
    "class_allow_list": ["nvflare.app_common.np.np_trainer.NPTrainer", "nvflare.app_common.workflows.fedavg.FedAvg"],
    "components": [
        {
            "id": "resource_manager",
            "path": "nvflare.app_common.resource_managers.gpu_resource_manager.GPUResourceManager",
            "args": {},
        },
        FLARE_LAUNCHER,
    ],
}
OUR_LAUNCHER = {**FLARE_LAUNCHER, "path": "clara_fl.fl.site.rejoin.RejoiningJobLauncher"}


def make_kit(
    root: Path, kind: str = "client", name: str = "site-1", resources: dict | None = DEFAULT_RESOURCES
) -> Path:
    """A minimal startup kit as FLARE's provisioning lays it out."""
    (root / "startup").mkdir(parents=True)
    (root / "local").mkdir()
    if kind == "server":
        (root / "startup" / "fed_server.json").write_text(
            json.dumps({"format_version": 2, "servers": [{"name": "project"}]})
        )
    else:
        (root / "startup" / "fed_client.json").write_text(json.dumps({"format_version": 2, "client": {"fqsn": name}}))
    if resources is not None:
        (root / "local" / "resources.json.default").write_text(json.dumps(resources, indent=4))
    return root


def setup(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(["site", "setup", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_creates_resources_json_from_the_default_and_keeps_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    kit = make_kit(tmp_path / "site-1")
    default_text = (kit / "local" / "resources.json.default").read_text()

    code, out, _ = setup(str(kit), capsys=capsys)

    assert code == 0
    assert (kit / "local" / "resources.json.default").read_text() == default_text
    resources = json.loads((kit / "local" / "resources.json").read_text())
    assert resources["class_allow_list"] == DEFAULT_RESOURCES["class_allow_list"] + list(CLARA_ALLOW_LIST)
    assert resources["components"] == [DEFAULT_RESOURCES["components"][0], OUR_LAUNCHER]
    assert {k: v for k, v in resources.items() if k not in ("class_allow_list", "components")} == {
        **{k: v for k, v in DEFAULT_RESOURCES.items() if k not in ("class_allow_list", "components")},
        "allow_log_streaming": False,
    }
    assert "created local/resources.json from local/resources.json.default" in out
    for entry in CLARA_ALLOW_LIST:
        assert entry in out
    assert "client kit 'site-1'" in out


def test_second_run_changes_nothing_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    kit = make_kit(tmp_path / "site-1")
    args = [str(kit), "--set", "DATA_ROOT=/data/spleen", "DATASET_JSON=/data/spleen/dataset_{SITE_NAME}.json"]
    assert setup(*args, capsys=capsys)[0] == 0
    files = [kit / "local" / "resources.json", kit / "local" / "clara_fl_site.json"]
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}

    code, out, _ = setup(*args, capsys=capsys)

    assert code == 0
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files} == before
    assert "nothing to change" in out
    assert "class_allow_list already allows clara-fl jobs" in out
    assert "code_policy stays restricted" in out
    assert not sorted((kit / "local").glob(".*")), "no temporary files are left behind"


def test_set_values_parse_like_clara_set_and_merge_with_the_site_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    kit = make_kit(tmp_path / "site-1")
    site_file = kit / "local" / "clara_fl_site.json"
    site_file.write_text(json.dumps({"environment": {"DATA_ROOT": "/old", "KEEP": "me"}, "comment": "hospital IT"}))

    code, out, _ = setup(
        str(kit),
        "--set",
        "DATA_ROOT=/data/spleen",
        "num_workers=0",
        "learning_rate=1e-4",
        "amp=off",
        "roi_size=[16,16,16]",
        capsys=capsys,
    )

    assert code == 0
    content = json.loads(site_file.read_text())
    assert content["environment"] == {
        "DATA_ROOT": "/data/spleen",
        "KEEP": "me",
        "num_workers": 0,
        "learning_rate": 1e-4,
        "amp": False,
        "roi_size": [16, 16, 16],
    }
    assert content["comment"] == "hospital IT"  # whatever else the site keeps there stays
    assert content["code_policy"] == "restricted"
    assert "DATA_ROOT = /old -> /data/spleen" in out
    assert "roi_size = [16, 16, 16] (new)" in out
    assert "unchanged: KEEP" in out


def test_site_name_is_kept_verbatim_and_read_back_by_the_learner_side(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    kit = make_kit(tmp_path / "hospital-a", name="hospital-a")
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_hospital-a.json").write_text("{}")

    code, out, _ = setup(
        str(kit), "--set", f"DATA_ROOT={data}", f"DATASET_JSON={data}/dataset_{{SITE_NAME}}.json", capsys=capsys
    )

    assert code == 0
    content = read_site_file(str(kit / "local" / "clara_fl_site.json"))
    assert content["environment"]["DATASET_JSON"] == f"{data}/dataset_{{SITE_NAME}}.json"
    assert code_policy(content) == "restricted"
    assert "note:" not in out  # both paths exist for this site, so no warning
    assert "client kit 'hospital-a'" in out


def test_missing_data_paths_are_noted_not_refused(tmp_path: Path) -> None:
    kit = make_kit(tmp_path / "site-2", name="site-2")
    result = setup_site(kit, {"DATASET_JSON": "/nowhere/dataset_{SITE_NAME}.json"})
    assert result.notes == ["DATASET_JSON /nowhere/dataset_site-2.json does not exist on this machine (yet)"]
    assert "note: DATASET_JSON /nowhere/dataset_site-2.json" in result.summary()


def test_allow_code_records_full_and_switching_back_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.delenv("CLARA_FL_CODE_POLICY", raising=False)
    kit = make_kit(tmp_path / "site-1")
    site_file = kit / "local" / "clara_fl_site.json"

    code, out, _ = setup(str(kit), "--allow-code", capsys=capsys)
    assert code == 0
    assert json.loads(site_file.read_text()) == {"environment": {}, "code_policy": "full", "confinement": "preferred"}
    assert code_policy(read_site_file(str(site_file))) == "full"
    assert "code_policy = full" in out and "full Python" in out

    code, out, _ = setup(str(kit), capsys=capsys)
    assert code == 0
    assert json.loads(site_file.read_text())["code_policy"] == "restricted"
    assert "code_policy = restricted (was full)" in out
    assert "nothing to change" not in out


def test_server_kit_with_an_existing_resources_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    kit = make_kit(tmp_path / "server", kind="server")
    existing = {**DEFAULT_RESOURCES, "snapshot_persistor": {"args": {"root_dir": "/srv/flare/snapshots"}}}
    (kit / "local" / "resources.json").write_text(json.dumps(existing))

    code, out, _ = setup(str(kit), capsys=capsys)

    assert code == 0
    resources = json.loads((kit / "local" / "resources.json").read_text())
    assert resources["snapshot_persistor"] == existing["snapshot_persistor"]
    assert resources["class_allow_list"] == existing["class_allow_list"] + list(CLARA_ALLOW_LIST)
    assert "created" not in out
    assert "server kit 'server'" in out
    assert json.loads((kit / "local" / "clara_fl_site.json").read_text()) == {
        "environment": {},
        "code_policy": "restricted",
        "confinement": "preferred",
    }


def test_a_server_kit_gets_the_component_that_ends_jobs_a_restart_stranded_once(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    kit = make_kit(tmp_path / "server", kind="server")

    first = setup(str(kit), capsys=capsys)[1]
    second = setup(str(kit), capsys=capsys)[1]

    components = json.loads((kit / "local" / "resources.json").read_text())["components"]
    ours = [c for c in components if c["path"] == "clara_fl.fl.server.stranded_jobs.EndStrandedJobs"]
    assert len(ours) == 1 and len(components) == len(DEFAULT_RESOURCES["components"]) + 1
    assert "added component clara_fl.fl.server.stranded_jobs.EndStrandedJobs" in first
    assert "nothing to change" in second


def test_a_client_kit_gets_no_server_component(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    kit = make_kit(tmp_path / "site-1")

    setup(str(kit), capsys=capsys)

    components = json.loads((kit / "local" / "resources.json").read_text())["components"]
    assert [c["id"] for c in components] == [c["id"] for c in DEFAULT_RESOURCES["components"]]


def test_a_client_kit_launches_jobs_with_the_launcher_that_rejoins_them_once(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    kit = make_kit(tmp_path / "site-1")

    first = setup(str(kit), capsys=capsys)[1]
    second = setup(str(kit), capsys=capsys)[1]

    components = json.loads((kit / "local" / "resources.json").read_text())["components"]
    assert [c for c in components if c["id"] == "process_launcher"] == [OUR_LAUNCHER]
    assert len(components) == len(DEFAULT_RESOURCES["components"])
    assert "added component clara_fl.fl.site.rejoin.RejoiningJobLauncher (a site whose job process died" in first
    assert "nothing to change" in second


def test_a_client_kit_with_another_job_launcher_keeps_it_and_is_told_it_does_not_rejoin(tmp_path: Path) -> None:
    other = {"id": "k8s_launcher", "path": "nvflare.app_opt.job_launcher.k8s_launcher.ClientK8sJobLauncher", "args": {}}
    kit = make_kit(tmp_path / "site-1", resources={**DEFAULT_RESOURCES, "components": [other]})

    result = setup_site(kit)

    assert json.loads((kit / "local" / "resources.json").read_text())["components"] == [other]
    assert any("does not rejoin the running job" in note for note in result.notes)


def test_allow_all_and_missing_allow_list(tmp_path: Path) -> None:
    open_kit = make_kit(tmp_path / "open", resources={"format_version": 2, "class_allow_list": ["*"]})
    assert setup_site(open_kit).allow_list_added == []
    assert json.loads((open_kit / "local" / "resources.json").read_text())["class_allow_list"] == ["*"]

    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    bare_kit = make_kit(tmp_path / "bare", resources={"format_version": 2})
    result = setup_site(bare_kit)
    assert json.loads((bare_kit / "local" / "resources.json").read_text())["class_allow_list"] == [
        *DEFAULT_CLASS_ALLOW_LIST,
        *CLARA_ALLOW_LIST,
    ]
    assert any("no class_allow_list" in note for note in result.notes)


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "no such folder"),
        ("empty", "not a FLARE startup kit"),
        ("admin", "this is an admin kit"),
        ("no_resources", "neither local/resources.json nor local/resources.json.default"),
    ],
)
def test_clear_error_for_a_folder_that_is_not_a_site_kit(
    tmp_path: Path, capsys: pytest.CaptureFixture, layout: str, message: str
) -> None:
    folder = tmp_path / "kit"
    if layout == "empty":
        folder.mkdir()
    elif layout == "admin":
        (folder / "startup").mkdir(parents=True)
        (folder / "startup" / "fed_admin.json").write_text("{}")
    elif layout == "no_resources":
        make_kit(folder, resources=None)

    code, out, err = setup(str(folder), "--set", "DATA_ROOT=/data", capsys=capsys)

    assert code == 2
    assert message in err and str(folder) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (folder / "local" / "clara_fl_site.json").exists()


def test_bad_set_and_bad_site_file_are_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    kit = make_kit(tmp_path / "site-1")
    code, _, err = setup(str(kit), "--set", "DATA_ROOT", capsys=capsys)
    assert code == 2 and "--set DATA_ROOT: expected NAME=VALUE" in err

    (kit / "local" / "clara_fl_site.json").write_text('{"environment": [1, 2]}')
    with pytest.raises(ConfigError, match="a site file must be"):
        setup_site(kit, {"DATA_ROOT": "/data"})


def test_every_class_our_templates_use_is_allowed_after_setup(tmp_path: Path) -> None:
    """FLARE's own authorizer, on a kit set up by clara-fl, admits every component of every template and shipped job."""
    from nvflare.apis.workspace import Workspace
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST
    from nvflare.app_common.widgets.component_path_authorizer import ComponentPathAuthorizer
    from pyhocon import ConfigFactory

    kit = make_kit(tmp_path / "site-1", resources=None)
    (kit / "local" / "resources.json.default").write_text(
        json.dumps({"format_version": 2, "class_allow_list": list(DEFAULT_CLASS_ALLOW_LIST)})
    )
    paths: set[str] = set()

    def collect(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("path"), str):
                paths.add(node["path"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    configs = [
        *REPO.glob("job_templates/*/config_fed_*.conf"),
        *REPO.glob("simulator_configs/*/app/config/config_fed_*.json"),
    ]
    assert len(configs) >= 6
    for config in configs:
        collect(ConfigFactory.parse_file(str(config)).as_plain_ordered_dict())
    assert (
        "clara_fl.fl.site.learner.ClaraLearner" in paths
        and "nvflare.app_common.executors.learner_executor.LearnerExecutor" in paths
    )

    authorizer, workspace = ComponentPathAuthorizer(), Workspace(str(kit))
    refused = []
    for path in sorted(paths):
        try:
            authorizer.authorize_component_config({"path": path}, workspace=workspace)
        except Exception:
            refused.append(path)
    assert "clara_fl.fl.site.learner.ClaraLearner" in refused, (
        "FLARE's default list alone must refuse clara-fl's classes"
    )

    setup_site(kit)
    authorizer = ComponentPathAuthorizer()
    for path in sorted(paths):
        authorizer.authorize_component_config({"path": path}, workspace=workspace)


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kits made by ``nvflare provision`` (a real project, not POC): the server has only resources.json.default."""
    root = tmp_path_factory.mktemp("provision")
    (root / "home").mkdir()
    (root / "project.yml").write_text(
        "api_version: 3\nname: hospitals\nparticipants:\n"
        "  - {name: flare.example.org, type: server, org: nvidia, fed_learn_port: 8002}\n"
        "  - {name: hospital-a, type: client, org: a}\n"
        "  - {name: admin@example.org, type: admin, org: nvidia, role: project_admin}\n"
        "builders:\n"
        "  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder\n"
        "  - path: nvflare.lighter.impl.static_file.StaticFileBuilder\n    args: {config_folder: config}\n"
        "  - path: nvflare.lighter.impl.cert.CertBuilder\n"
        "  - path: nvflare.lighter.impl.signature.SignatureBuilder\n"
    )
    env = {**os.environ, "HOME": str(root / "home")}
    nvflare = Path(sys.executable).parent / "nvflare"
    proc = subprocess.run(
        [str(nvflare), "provision", "-p", "project.yml", "-w", "workspace", "--force"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "workspace" / "hospitals" / "prod_00"


def test_works_on_kits_from_nvflare_provision(provisioned: Path) -> None:
    server = setup_site(provisioned / "flare.example.org")
    assert (server.kit.kind, server.kit.name) == ("server", "flare.example.org") and server.resources_created
    client = setup_site(provisioned / "hospital-a", {"DATA_ROOT": "/data/spleen"})
    assert (client.kit.kind, client.kit.name) == ("client", "hospital-a")
    assert client.resources_created and client.allow_list_added == list(CLARA_ALLOW_LIST)
    with pytest.raises(ConfigError, match="admin kit"):
        find_startup_kit(provisioned / "admin@example.org")
    assert not setup_site(provisioned / "hospital-a", {"DATA_ROOT": "/data/spleen"}).changed


def test_a_client_kit_stops_streaming_its_error_log_to_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    kit = make_kit(tmp_path / "site-1")

    code, out, _ = setup(str(kit), capsys=capsys)

    assert code == 0
    assert json.loads((kit / "local" / "resources.json").read_text())["allow_log_streaming"] is False
    assert "allow_log_streaming = false" in out


def test_a_site_that_chose_log_streaming_keeps_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    kit = make_kit(tmp_path / "site-1")
    resources = {**DEFAULT_RESOURCES, "allow_log_streaming": True}
    (kit / "local" / "resources.json").write_text(json.dumps(resources))

    setup(str(kit), capsys=capsys)

    assert json.loads((kit / "local" / "resources.json").read_text())["allow_log_streaming"] is True


def test_the_site_file_records_the_chosen_confinement_and_the_summary_says_what_the_kernel_gives(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    kit = make_kit(tmp_path / "site-1")

    code, out, _ = setup(str(kit), "--confinement", "required", capsys=capsys)

    assert code == 0
    assert json.loads((kit / "local" / "clara_fl_site.json").read_text())["confinement"] == "required"
    assert "job confinement 'required': " in out and "Landlock" in out
