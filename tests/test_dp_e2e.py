"""A DP-SGD job on the spleen MMAR in FLARE's simulator: the sites train with Opacus, record the epsilon they
spent each round (site log, site events, the result's meta), and the report and the cross-site table that
``clara-fl simulate`` prints show it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SPLEEN_MMAR

pytestmark = pytest.mark.e2e

ROUNDS = 2


def test_a_dp_job_trains_and_records_the_epsilon_each_site_spent_each_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clara_fl.cli import main
    from clara_fl.data.synthetic import make_synthetic_dataset
    from clara_fl.fl.dp_settings import parse_dp_option
    from clara_fl.recipes.app_configs import FedAvgSettings
    from clara_fl.recipes.job_folder import create_job
    from clara_fl.report.collect import collect
    from clara_fl.runtime.events import SITE_TRAINING_DONE, read_events

    data = make_synthetic_dataset(tmp_path / "data", cases=8, sites=2, shape=(32, 32, 32))
    site_file = tmp_path / "clara_fl_site.json"
    environment = {"DATA_ROOT": str(data.root), "DATASET_JSON": str(data.root / "dataset_{SITE_NAME}.json")}
    site_file.write_text(json.dumps({"environment": environment, "dp": {"required": True, "max_epsilon": 2}}))
    overrides = {"roi_size": [16, 16, 16], "num_workers": 0, "num_interval_per_valid": 1}
    dp = parse_dp_option("epsilon=2,delta=1e-3,max_grad_norm=1")
    settings = FedAvgSettings(num_rounds=ROUNDS, steps_aggregation=1, min_clients=2, overrides=overrides, dp=dp)
    job = create_job(SPLEEN_MMAR, tmp_path / "job", settings=settings)
    workspace = tmp_path / "ws"

    code = main(["simulate", str(job), "-w", str(workspace), "-n", "2", "-t", "2", "--site-config", str(site_file)])

    assert code == 0, (workspace / "simulator_output.txt").read_text()[-3000:]
    printed = capsys.readouterr().out.splitlines()
    for site in ("site-1", "site-2"):
        events = next(workspace.rglob(f"app_{site}/site_events.jsonl"))
        done = [e for e in read_events(events) if e.kind == SITE_TRAINING_DONE]
        spent = [e.numbers()["dp_epsilon"] for e in done]
        assert [e.round for e in done] == list(range(ROUNDS)) and all(e.numbers()["steps"] > 0 for e in done)
        assert 0 < spent[0] < spent[1] <= dp.epsilon
        log = (workspace / site / "log.txt").read_text()
        assert f"round {ROUNDS - 1}: DP-SGD epsilon spent" in log
        assert "DP at the case level: 4 rows per case" in log  # the MMAR's 4 crops a case: the noise is per case
        assert "extra (ignored)" not in log  # the server's global model has the sites' (DP-compatible) keys
        row = next(line for line in printed if line.startswith(site))
        assert row.split()[-1] == f"{spent[-1]:.3f}"  # the table's DP epsilon column: the last round's
    assert any(line.startswith("DP epsilon: ") and "delta 0.001" in line for line in printed)
    results = collect(workspace)
    assert sorted(results.dp_epsilon) == ["site-1", "site-2"]
    assert results.cross_site is not None and results.last_epsilon("site-1") == pytest.approx(
        results.dp_epsilon["site-1"][ROUNDS - 1]
    )
