"""The spent DP-SGD budget beside the cross-site table that ``clara-fl simulate`` (and ``evaluate``) print: read from
the sites' events as the report reads it, a column per data site where any site ran DP-SGD, nothing otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clara_fl.fl.jobs.results import SpentBudgets, cross_site_table, format_cross_site_table
from clara_fl.report.collect import spent_budgets
from clara_fl.runtime.events import SITE_TRAINING_DONE, SITE_TRAINING_STARTED, EventLog

RESULTS = {
    "site-1": {"SRV_FL_global_model.pt": {"val_mean_dice": 0.61}, "site-1": {"val_mean_dice": 0.55}},
    "site-2": {"SRV_FL_global_model.pt": {"val_mean_dice": 0.58}, "site-1": {"val_mean_dice": 0.5}},
}
DP_ARGS = {"epsilon": 8.0, "delta": 0.001, "max_grad_norm": 1.0, "rounds": 2}


def simulator_workspace(root: Path, epsilon: dict[str, list[float]] | None, sites: tuple[str, ...]) -> Path:
    """A finished simulator workspace as FLARE and clara-fl leave it: the cross-site results, each site's app with
    its client config (the Learner's ``dp`` when ``epsilon`` is given) and its events, one ``site_training_done``
    per round with the epsilon spent after it."""
    workspace = root / "ws"
    results = workspace / "server" / "simulate_job" / "cross_site_val" / "cross_val_results.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps(RESULTS))
    for site in sites:
        app = workspace / site / "simulate_job" / f"app_{site}"
        (app / "config").mkdir(parents=True)
        learner = {"local_epochs": 1, **({"dp": DP_ARGS} if epsilon else {})}
        config = {
            "components": [{"id": "clara_learner", "path": "clara_fl.fl.site.learner.ClaraLearner", "args": learner}]
        }
        (app / "config" / "config_fed_client.json").write_text(json.dumps(config))
        log = EventLog(app / "site_events.jsonl")
        for round_, spent in enumerate((epsilon or {}).get(site, [None, None])):
            log.write(SITE_TRAINING_STARTED, round_)
            log.write(SITE_TRAINING_DONE, round_, fields={"steps": 3, **({"dp_epsilon": spent} if spent else {})})
    return workspace


def test_each_sites_last_spent_epsilon_and_the_jobs_delta_are_read_from_the_sites_events(tmp_path: Path) -> None:
    workspace = simulator_workspace(tmp_path, {"site-1": [4.5, 7.9], "site-2": [4.6, 7.95]}, ("site-1", "site-2"))

    budgets = spent_budgets(workspace)

    assert budgets == SpentBudgets({"site-1": 7.9, "site-2": 7.95}, delta=0.001)


def test_a_run_where_no_site_ran_dp_sgd_has_no_spent_budgets(tmp_path: Path) -> None:
    workspace = simulator_workspace(tmp_path, None, ("site-1", "site-2"))

    assert spent_budgets(workspace) is None
    assert spent_budgets(tmp_path / "not-a-run") is None


def test_the_table_has_an_aligned_epsilon_column_and_a_line_that_says_what_it_is() -> None:
    budgets = SpentBudgets({"site-1": 7.9012, "site-2": 7.95}, delta=0.001)

    lines = format_cross_site_table(RESULTS, "val_mean_dice", budgets=budgets).splitlines()

    header, rule, site_1, site_2 = lines[1:5]
    assert header.split("  ")[-1] == "DP epsilon" and site_1.split()[-1] == "7.901" and site_2.split()[-1] == "7.950"
    assert len({len(header), len(rule), len(site_1), len(site_2)}) == 1
    assert header.index("DP epsilon") == site_1.index("7.901")
    assert (
        lines[-1] == "DP epsilon: the privacy budget each site had spent after its last round of DP-SGD at delta 0.001"
    )


def test_a_site_without_dp_sgd_gets_a_dash_and_a_dp_site_without_results_still_gets_a_row() -> None:
    budgets = SpentBudgets({"site-1": 2.0, "site-3": 1.5})

    rows = format_cross_site_table(RESULTS, "val_mean_dice", budgets=budgets).splitlines()[3:6]

    assert [row.split()[0] for row in rows] == ["site-1", "site-2", "site-3"]
    assert rows[1].split()[-1] == "-"
    assert rows[2].split()[1:] == ["-", "-", "1.500"]


def test_without_dp_sgd_the_table_is_unchanged(tmp_path: Path) -> None:
    workspace = simulator_workspace(tmp_path, None, ("site-1", "site-2"))

    table = cross_site_table(workspace, budgets=spent_budgets(workspace))

    assert table == format_cross_site_table(RESULTS, "val_mean_dice")
    assert table is not None and "epsilon" not in table


def test_the_simulate_command_prints_each_sites_spent_epsilon_beside_its_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clara_fl.apps.simulate import report

    workspace = simulator_workspace(tmp_path, {"site-1": [4.5, 7.9], "site-2": [4.6, 7.95]}, ("site-1", "site-2"))

    code = report(str(workspace), None)

    printed = capsys.readouterr().out.splitlines()
    assert code == 0
    assert next(line for line in printed if line.startswith("site-2")).split()[-1] == "7.950"
    assert any(line.startswith("DP epsilon: ") and "delta 0.001" in line for line in printed)
