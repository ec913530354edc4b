"""``clara-fl report``: the collectors on small hand-made inputs, then whole reports of a real 2-site
simulation, of the same run laid out as a downloaded job, and of a standalone MMAR."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest

from clara_fl.cli import main
from clara_fl.config.errors import ConfigError
from clara_fl.report.build import write_report
from clara_fl.report.progress import DeferredOutput, LogFollower, SimulationProgress
from clara_fl.report.readers import (
    read_case_scores,
    read_cross_site_matrix,
    read_global_model_metrics,
    read_round_timeline,
)
from tests.conftest import SPLEEN_MMAR, tiny_set
from tests.test_fl_simulation import SITES

SERVER_MODELS = ["SRV_FL_global_model", "SRV_best_FL_global_model"]
SECTIONS = ["header", "cross-site", "training-curves", "global-model", "round-timeline", "validation-details"]


def server_line(time: str, logger: str, message: str, ctx: str = "") -> str:
    context = f"[identity=simulator_server, run=simulate_job{ctx}] - " if ctx else ""
    return f"2026-12-02 10:00:{time} - {logger} - INFO - {context}{message}\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's signature and IHDR chunk; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# -- collectors ------------------------------------------------------------------------------------


def test_cross_site_matrix_has_a_none_cell_for_a_missing_and_for_a_failed_result(tmp_path: Path) -> None:
    path = tmp_path / "cross_val_results.json"
    results = {
        "site-1": {"SRV_FL_global_model.pt": {"val_mean_dice": 0.8}, "site-1": {"val_mean_dice": 0.7}, "site-2": {}},
        "site-2": {"SRV_FL_global_model.pt": {"val_mean_dice": 0.6}, "site-2": {"val_mean_dice": 0.5}},
    }
    path.write_text(json.dumps(results))

    matrix = read_cross_site_matrix(path)

    assert matrix.sites == ["site-1", "site-2"]
    assert matrix.owners == ["SRV_FL_global_model.pt", "site-1", "site-2"]
    assert matrix.value("site-1", "SRV_FL_global_model.pt", "val_mean_dice") == 0.8
    assert matrix.cells[("site-1", "site-2")] is None  # an empty result: the validation failed
    assert matrix.cells[("site-2", "site-1")] is None  # no result at all


def test_cross_site_results_that_are_not_a_matrix_are_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "cross_val_results.json"
    path.write_text("[1, 2]")

    with pytest.raises(ConfigError, match="expected {data site: {model owner: metrics}}"):
        read_cross_site_matrix(path)


def test_case_scores_are_named_by_file_and_numbered_where_the_name_is_none(tmp_path: Path) -> None:
    raw = tmp_path / "val_mean_dice_raw.csv"
    raw.write_text("filename,class0,mean\n/data/imagesTr/case_003.nii.gz,0.5,0.5\nNone,0.25,0.25\n")

    scores = read_case_scores(raw, "site-1", "site-2")

    assert scores.metric == "val_mean_dice"
    assert scores.cases == [("case_003", 0.5), ("case 2", 0.25)]


def test_round_timeline_splits_each_round_into_training_waiting_and_aggregation(tmp_path: Path) -> None:
    task = ", task_name=train, task_id=1"
    log = tmp_path / "log.txt"
    log.write_text(
        server_line("00,000", "ScatterAndGather", "Round 0 started.", ", wf=sag")
        + server_line("01,000", "ServerRunner", "assigned task to client site-1: ", f", peer=site-1{task}")
        + server_line("02,000", "ServerRunner", "assigned task to client site-2: ", f", peer=site-2{task}")
        + server_line("07,000", "ServerRunner", "got result from client site-1 for task: name=train, id=1", ", peer=s")
        + server_line("12,000", "ServerRunner", "got result from client site-2 for task: name=train, id=2", ", peer=s")
        + server_line("12,500", "ScatterAndGather", "Start aggregation.", ", wf=sag")
        + server_line("13,000", "ScatterAndGather", "End aggregation.", ", wf=sag")
        + server_line("13,100", "ScatterAndGather", "Round 0 finished.", ", wf=sag")
    )

    (timing,) = read_round_timeline(log)

    assert timing.round == 0
    assert timing.training_time("site-1") == pytest.approx(6.0)
    assert timing.training_time("site-2") == pytest.approx(10.0)
    assert timing.waiting_time("site-1") == pytest.approx(1.0 + 5.5)  # for the task, then for site-2
    assert timing.aggregation_time() == pytest.approx(0.5)
    assert timing.slowest_site() == "site-2"


def test_a_round_without_a_finished_line_ends_where_the_next_round_starts(tmp_path: Path) -> None:
    """FLARE's ModelController FedAvg: no "Round N finished", no separate aggregation step."""
    log = tmp_path / "log.txt"
    log.write_text(
        server_line("00,000", "FedAvg", "-----Round 0 started.-----")
        + server_line("01,000", "ServerRunner", "assigned task to client site-1: ", ", peer=site-1, task_name=train")
        + server_line("04,000", "ServerRunner", "got result from client site-1 for task: name=train, id=1", ", peer=s")
        + server_line("05,000", "FedAvg", "-----Round 1 started.-----")
        + server_line("09,000", "FedAvg", "-----Finished FedAvg.-----")
    )

    first, second = read_round_timeline(log)

    assert first.finished == pytest.approx(5.0) and second.finished == pytest.approx(9.0)
    assert first.aggregation_time() is None
    assert first.waiting_time("site-1") == pytest.approx(1.0 + 1.0)


def test_global_model_metrics_come_from_the_site_log_and_else_from_the_server_log(tmp_path: Path) -> None:
    site_log = tmp_path / "site-1.txt"
    site_log.write_text(
        server_line("01,000", "ClaraLearner", "before_train_validate: {'val_mean_dice': 0.1, 'val_acc': 0.5}")
        + server_line("01,100", "ClaraLearner", "round 0: training 1 epoch(s)")
        + server_line("05,000", "ClaraLearner", "before_train_validate: {'val_mean_dice': 0.4, 'val_acc': 0.9}")
        + server_line("05,100", "ClaraLearner", "round 1: training 1 epoch(s)")
    )
    server_log = tmp_path / "server.txt"
    server_log.write_text(
        server_line("04,000", "ScatterAndGather", "Round 1 started.")
        + server_line("06,000", "IntimeModelSelector", "validation metric 0.3 from client site-2")
        + server_line("06,500", "IntimeModelSelector", "validation metric 0.4 from client site-1")
    )

    found = read_global_model_metrics({"site-1": site_log}, server_log, "val_mean_dice")

    assert found["site-1"] == {0: {"val_mean_dice": 0.1, "val_acc": 0.5}, 1: {"val_mean_dice": 0.4, "val_acc": 0.9}}
    assert found["site-2"] == {1: {"val_mean_dice": 0.3}}


def test_progress_line_counts_the_round_and_the_sites_that_returned_it(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    follower = LogFollower(str(log))
    progress = SimulationProgress(total_rounds=3, total_sites=2)
    with open(log, "a") as f:
        f.write(server_line("00,000", "ScatterAndGather", "Round 0 started."))
        f.write(server_line("01,000", "ServerRunner", "got result from client site-2 for task: name=train, id=1"))
        f.write(server_line("02,000", "ServerRunner", "Round 1 started."))  # not whole yet: no newline
        f.seek(f.tell() - 1)
        f.truncate()

    steps = progress.follow(follower)

    assert steps == ["round 1 of 3: 0 of 2 sites done", "round 1 of 3: 1 of 2 sites done"]
    assert progress.line(65.0) == "round 1 of 3: 1 of 2 sites done, 1:05 elapsed"
    with open(log, "a") as f:
        f.write("\n")
    assert progress.follow(follower) == ["round 2 of 3: 0 of 2 sites done"]
    follower.close()


def test_following_a_log_skips_an_earlier_runs_log_until_the_new_run_replaces_it(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.write_text(server_line("00,000", "ScatterAndGather", "Round 5 started."))
    follower = LogFollower(str(log))

    assert follower.new_lines() == [] and not follower.is_fresh()
    log.unlink()
    log.write_text(server_line("00,000", "ScatterAndGather", "Round 0 started."))  # the simulator's new log
    assert follower.is_fresh()
    assert [line.endswith("Round 0 started.") for line in follower.new_lines()] == [True]
    follower.close()


def test_simulator_output_is_held_back_until_the_workspace_is_ready_then_written_in_order(tmp_path: Path) -> None:
    ready = []
    output = DeferredOutput(str(tmp_path / "ws" / "simulator_output.txt"), ready=lambda: bool(ready))

    output.write(b"first\n")
    assert not (tmp_path / "ws").exists()
    ready.append(True)
    output.write(b"second\n")
    output.close()

    assert (tmp_path / "ws" / "simulator_output.txt").read_bytes() == b"first\nsecond\n"


def test_metrics_saver_without_batch_transform_names_cases_from_the_image_metadata(tmp_path: Path) -> None:
    import torch
    from ignite.engine import Engine, Events
    from monai.data import MetaTensor, list_data_collate

    from clara_fl.components.metrics_saver import MetricsSaver

    images = [MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": f"/data/case_{i}.nii.gz"}) for i in range(4)]
    cases = [{"image": image, "label": torch.zeros(1)} for image in images]
    batches = [list_data_collate(cases[:2]), list_data_collate(cases[2:])]
    engine = Engine(lambda engine, batch: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def metrics_computed(engine: Engine) -> None:
        engine.state.metrics = {"dice": 0.5}
        engine.state.metric_details = {"dice": torch.tensor([[0.1], [0.2], [0.3], [0.4]])}

    MetricsSaver(save_dir=str(tmp_path), metrics="*", metric_details=["dice"]).attach(engine)
    engine.run(batches, max_epochs=1)

    rows = (tmp_path / "dice_raw.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == [f"/data/case_{i}.nii.gz" for i in range(4)]


def test_a_folder_that_holds_no_run_is_a_config_error_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "something").mkdir()

    with pytest.raises(ConfigError, match="expected a simulator workspace"):
        write_report(tmp_path)
    assert not (tmp_path / "report").exists()


def test_the_report_command_names_a_folder_that_holds_no_run_in_one_line(tmp_path: Path, capsys) -> None:
    code = main(["report", str(tmp_path)])

    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"clara-fl report: error: {tmp_path}: expected a simulator workspace")
    assert error.count("\n") == 1


def test_a_failed_cell_is_marked_in_the_table_and_the_heatmap(tmp_path: Path) -> None:
    workspace = tmp_path / "0a1b2c" / "workspace"
    (workspace / "cross_site_val").mkdir(parents=True)
    results = {
        "site-1": {"SRV_FL_global_model.pt": {"val_mean_dice": 0.8}, "site-1": {"val_mean_dice": 0.7}},
        "site-2": {"SRV_FL_global_model.pt": {"val_mean_dice": 0.6}, "site-1": "validation failed"},
    }
    (workspace / "cross_site_val" / "cross_val_results.json").write_text(json.dumps(results))

    written = write_report(tmp_path / "0a1b2c", tmp_path / "out")

    html = written.html.read_text()
    cross_site = html.split('id="cross-site"')[1].split("</section>")[0]
    assert cross_site.count('<td class="failed">failed</td>') == 1
    assert re.search(r"<th>site-2</th>\s*<td class=\"num\">0\.6000</td>\s*<td class=\"failed\">failed</td>", cross_site)
    heatmap = next(p for p in written.pictures if p.name == "cross_site")
    assert png_size(tmp_path / "out" / "cross_site.png") == (heatmap.width, heatmap.height)


# -- curves where the MMAR's TensorBoard handlers write them ----------------------------------------


def mmar_writing_tensorboard_to(mmar: Path, train: str, validate: str) -> Path:
    """A copy of the spleen MMAR whose trainer and evaluator TensorBoardStatsHandlers write to these log_dirs."""
    shutil.copytree(SPLEEN_MMAR, mmar)
    config_file = mmar / "config" / "config_train.json"
    config = json.loads(config_file.read_text())
    for section_name, log_dir in (("train", train), ("validate", validate)):
        [handler] = [h for h in config[section_name]["handlers"] if h["name"] == "TensorBoardStatsHandler"]
        handler["args"]["log_dir"] = log_dir
    config_file.write_text(json.dumps(config))
    return mmar


def write_events(folder: Path, tag: str, values: list[float]) -> None:
    """Event files as a TensorBoardStatsHandler writes them: ``tag`` at steps 1, 2, ..."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as writer:
        for step, value in enumerate(values, start=1):
            writer.add_scalar(tag, value, step)


def test_a_standalone_report_has_the_curves_of_tensorboard_handlers_that_write_to_subfolders(tmp_path: Path) -> None:
    mmar = mmar_writing_tensorboard_to(tmp_path / "mmar", "{MMAR_CKPT_DIR}/tb_train", "{MMAR_CKPT_DIR}/tb_val")
    write_events(mmar / "models" / "tb_train", "train_loss", [0.9, 0.7, 0.6, 0.5])
    write_events(mmar / "models" / "tb_val", "val_mean_dice", [0.3, 0.5])
    stats = {"epochs_completed": 2, "total_iterations": 4, "best_key_metric": 0.5, "best_key_metric_epoch": 2}
    (mmar / "models" / "train_stats.json").write_text(json.dumps(stats))

    written = write_report(mmar, tmp_path / "report")

    assert "training_curves" in [p.name for p in written.pictures]
    assert "no TensorBoard events" not in written.html.read_text()
    from clara_fl.report.collect import collect

    curves = collect(mmar).curves["local"]
    assert (curves["train_loss"].steps, curves["train_loss"].values[-1]) == ([0.5, 1.0, 1.5, 2.0], pytest.approx(0.5))
    assert (curves["val_mean_dice"].steps, curves["val_mean_dice"].values) == ([1.0, 2.0], pytest.approx([0.3, 0.5]))


def test_curves_are_read_under_models_recursively_when_the_handlers_log_dirs_hold_no_events(tmp_path: Path) -> None:
    from clara_fl.report.collect import collect

    mmar = mmar_writing_tensorboard_to(tmp_path / "mmar", "{MMAR_CKPT_DIR}/tb_train", "{MMAR_CKPT_DIR}/tb_val")
    write_events(mmar / "models" / "runs" / "train", "train_loss", [0.9, 0.8])
    write_events(mmar / "models" / "runs" / "val", "val_mean_dice", [0.4])

    curves = collect(mmar).curves["local"]

    assert set(curves) == {"train_loss", "val_mean_dice"}


def test_a_sites_own_curves_come_from_where_its_apps_handlers_write_them(tmp_path: Path) -> None:
    from clara_fl.report.collect import collect

    workspace = tmp_path / "ws"
    (workspace / "server" / "simulate_job" / "cross_site_val").mkdir(parents=True)
    app = mmar_writing_tensorboard_to(
        workspace / "site-1" / "simulate_job" / "app_site-1", "{MMAR_CKPT_DIR}/tb_train", "{MMAR_CKPT_DIR}/tb_val"
    )
    write_events(app / "models" / "tb_train", "train_loss", [0.9, 0.8])
    write_events(app / "models" / "tb_val", "val_mean_dice", [0.4])

    curves = collect(workspace).curves

    assert set(curves["site-1"]) == {"train_loss", "val_mean_dice"}


# -- whole reports ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulate_command(fedavg_simulation) -> tuple[Path, str]:
    """``clara-fl simulate`` of a 3-round 2-site FedAvg with cross-site validation (the shape `clara-fl demo` runs):
    the workspace and what the command printed (the session's simulation, conftest.py)."""
    return fedavg_simulation.workspace, fedavg_simulation.printed


@pytest.fixture(scope="module")
def simulation(simulate_command: tuple[Path, str]) -> Path:
    return simulate_command[0]


@pytest.fixture(scope="module")
def simulation_report(simulation: Path, tmp_path_factory: pytest.TempPathFactory):
    return write_report(simulation, tmp_path_factory.mktemp("report") / "out")


@pytest.fixture(scope="module")
def standalone_report(trained_spleen: Path, tmp_path_factory: pytest.TempPathFactory):
    """The shared trained MMAR, copied, then validated (MetricsSaver's per-case CSVs), then reported."""
    from clara_fl.cli import main

    mmar = tmp_path_factory.mktemp("standalone") / "spleen_ct_seg"
    shutil.copytree(trained_spleen, mmar)
    from_checkpoint = ["dont_load_ts_model=True", "dont_load_ckpt_model=False"]
    assert main(["validate", "-m", str(mmar), "--set", *from_checkpoint, *tiny_set()]) == 0
    return write_report(mmar, mmar.parent / "report")


def assert_pictures_are_the_stated_pngs(written) -> None:
    assert written.pictures
    for picture in written.pictures:
        path = written.html.parent / f"{picture.name}.png"
        assert png_size(path) == (picture.width, picture.height), picture.name
        assert path.read_bytes() == picture.png


def assert_self_contained(html: str) -> None:
    assert not re.search(r"https?://|\b(?:src|href)=[\"']//|@import|url\(", html)
    sources = re.findall(r"\b(?:src|href)=[\"']([^\"']*)", html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


def section(html: str, name: str) -> str:
    assert f'id="{name}"' in html, f"section {name} missing"
    return html.split(f'id="{name}"')[1].split("</section>")[0]


@pytest.mark.e2e
def test_simulate_prints_progress_instead_of_the_simulator_output_and_ends_with_the_report(simulate_command) -> None:
    workspace, printed = simulate_command

    output = workspace / "simulator_output.txt"
    assert f"simulator output: {output}" in printed
    assert "round 3 of 3: 2 of 2 sites done" in printed
    assert "Epoch:" not in printed and "Epoch:" in output.read_text()  # the flood is in the file
    assert printed.rstrip().endswith(f"report: {workspace / 'report' / 'report.html'}")
    assert (workspace / "report" / "report.html").is_file()


@pytest.mark.e2e
def test_simulation_report_has_every_section_with_the_site_and_model_names(simulation_report) -> None:
    html = simulation_report.html.read_text()

    for name in SECTIONS:
        section(html, name)
    assert "rounds</th><td>3" in section(html, "header")
    for site in SITES:
        for name in ("cross-site", "training-curves", "global-model", "round-timeline", "validation-details"):
            assert site in section(html, name), f"{site} not in {name}"
    for model in SERVER_MODELS:
        assert model in section(html, "cross-site")
        assert model in section(html, "validation-details")
    assert re.search(r"<td>case_\d+</td>", section(html, "validation-details"))
    assert "failed" not in section(html, "cross-site").split("</p>")[1]


@pytest.mark.e2e
def test_simulation_report_pictures_are_valid_pngs_of_the_stated_size(simulation_report) -> None:
    names = {p.name for p in simulation_report.pictures}

    assert {"cross_site", "training_curves", "global_model", "round_timeline", "cases_val_mean_dice"} <= names
    assert_pictures_are_the_stated_pngs(simulation_report)


@pytest.mark.e2e
def test_simulation_report_is_one_self_contained_file(simulation_report) -> None:
    assert_self_contained(simulation_report.html.read_text())


@pytest.mark.e2e
def test_simulation_round_timeline_has_every_round_and_site(simulation_report) -> None:
    timeline = section(simulation_report.html.read_text(), "round-timeline")

    rows = re.findall(r"<tr><td class=\"num\">(\d+)</td><td>(site-\d)</td>", timeline)

    assert sorted(rows) == [(str(r), s) for r in range(3) for s in SITES]


@pytest.mark.e2e
def test_the_simulation_leaves_the_servers_and_each_sites_events_and_the_report_reads_them(simulation: Path) -> None:
    from clara_fl.report.collect import collect
    from clara_fl.runtime import events as ev

    server = ev.read_events(simulation / "server" / "simulate_job" / "app_server" / ev.SERVER_EVENTS_FILE)
    sites = {s: ev.read_events(simulation / s / "simulate_job" / f"app_{s}" / ev.SITE_EVENTS_FILE) for s in SITES}

    assert [e.round for e in server if e.kind == ev.ROUND_STARTED] == [0, 1, 2]
    assert {(e.site, e.round) for e in server if e.kind == ev.TASK_RESULT and e.text("task") == "train"} == {
        (s, r) for s in SITES for r in range(3)
    }
    for site, events in sites.items():
        assert [e.round for e in events if e.kind == ev.GLOBAL_MODEL_VALIDATED] == [0, 1, 2], site
        assert any(e.kind == ev.MODEL_VALIDATED for e in events), site
    assert set(collect(simulation).global_model) == set(SITES)


@pytest.mark.e2e
def test_a_downloaded_job_result_gives_the_same_sections_from_the_server_workspace_alone(
    simulation: Path, tmp_path: Path
) -> None:
    """A POC/production download: <job_id>/workspace/ holds cross_site_val/, tb_events/, log.txt, no site folders."""
    workspace = tmp_path / "download" / "5e1f-job" / "workspace"
    shutil.copytree(simulation / "server" / "simulate_job", workspace)
    shutil.copy(simulation / "server" / "log.txt", workspace / "log.txt")

    written = write_report(tmp_path / "download" / "5e1f-job", tmp_path / "out")

    html = written.html.read_text()
    for name in ("header", "cross-site", "training-curves", "global-model", "round-timeline"):
        for site in SITES:
            assert site in section(html, name), f"{site} not in {name}"
    assert "validation details" in section(html, "not-found")  # the per-case CSVs stay at the sites
    assert_pictures_are_the_stated_pngs(written)
    assert_self_contained(html)


def test_standalone_report_shows_curves_best_epoch_and_per_case_values(standalone_report) -> None:
    html = standalone_report.html.read_text()

    for name in ("header", "training-curves", "validation-details"):
        section(html, name)
    for absent in ("cross-site", "global-model", "round-timeline"):
        assert f'id="{absent}"' not in html
    header = section(html, "header")
    assert "best key metric epoch" in header and "learning rate start" in header
    assert re.search(r"<td>case_\d+</td>", section(html, "validation-details"))
    assert_pictures_are_the_stated_pngs(standalone_report)
    assert_self_contained(html)


def test_standalone_training_writes_the_learning_rate_every_epoch_and_the_report_draws_it(
    spleen_mmar: Path, tmp_path: Path
) -> None:
    from clara_fl.report.readers import read_tensorboard_curves

    assert main(["train", "-m", str(spleen_mmar), "--set", *tiny_set(epochs=2)]) == 0

    curves = read_tensorboard_curves(spleen_mmar / "models")
    assert "learning_rate" in curves and list(curves["learning_rate"].steps) == [1, 2]
    configured = json.loads((spleen_mmar / "config" / "config_train.json").read_text())["learning_rate"]
    assert curves["learning_rate"].values[0] == pytest.approx(configured)  # StepLR steps every 5000 iterations
    from clara_fl.report.collect import collect

    assert "learning_rate" in collect(spleen_mmar).curves["local"]  # a panel of the standalone curves
