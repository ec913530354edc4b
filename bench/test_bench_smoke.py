"""Smoke test of the benchmark harness (not collected by ``make test``, whose testpaths are tests/).

    .venv/bin/python -m pytest -q bench/test_bench_smoke.py                  # < 60 s on 2 idle cores
    BENCH_SMOKE_FL=1 .venv/bin/python -m pytest -q bench/test_bench_smoke.py  # also the FL figures (~2 more minutes)

The quick standalone run checks that every side really trains (the same final val_mean_dice on
both sides is the proof that A and B are the same training); the FL analysis is checked on canned
logs, and end to end only when asked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as bench  # noqa: E402

RECORD_KEYS = {"figure", "measure", "baseline", "kind", "value", "unit", "goal", "met", "samples", "note", "detail"}


def run_quick(tmp_path: Path, figures: str) -> dict:
    output = tmp_path / "latest.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--quick",
            "--figures",
            figures,
            "--output",
            str(output),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "goal" in proc.stdout and "met" in proc.stdout  # the table
    result = json.loads(output.read_text())
    for record in result["records"]:
        assert set(record) == RECORD_KEYS, record
    return result


def test_quick_standalone_figures_compare_the_same_training(tmp_path: Path) -> None:
    result = run_quick(tmp_path, "1,2,3,7")
    records = {r["figure"]: r for r in result["records"]}
    assert set(records) == {
        "1 standalone overhead",
        "1 standalone overhead (CPU)",
        "2 start-up",
        "2 start-up (CLI)",
        "3 bundle peer",
        "7 GPU throughput",
    }
    assert records["1 standalone overhead"]["detail"]["same_training"] is True
    assert records["3 bundle peer"]["detail"]["same_training"] is True
    assert records["1 standalone overhead"]["value"] > 0 and records["2 start-up"]["value"] is not None
    assert records["2 start-up (CLI)"]["met"] is True, records["2 start-up (CLI)"]["note"]
    assert records["7 GPU throughput"]["kind"] == "skipped"


@pytest.mark.skipif(
    not os.environ.get("BENCH_SMOKE_FL"), reason="set BENCH_SMOKE_FL=1 to run the FL figures end to end"
)
def test_quick_fl_figures(tmp_path: Path) -> None:
    result = run_quick(tmp_path, "4,5,6")
    figures = [r["figure"] for r in result["records"]]
    assert figures == [
        "4 FL round overhead",
        "4 FL round overhead vs MONAI",
        "5 memory: peak RSS",
        "5 memory: RSS growth",
        "6 FL quality",
    ]
    assert all(r["value"] is not None for r in result["records"])


SERVER_LOG = """\
2026-11-25 10:00:00,000 - ScatterAndGather - INFO - [identity=simulator_server] - Round 0 started.
2026-11-25 10:00:02,000 - ScatterAndGather - INFO - [identity=simulator_server] - Round 1 started.
2026-11-25 10:00:03,500 - FedAvg - INFO - [identity=simulator_server, wf=controller] - 
--------------------------------------------------------------------------------
                                Round 2 started.                                
--------------------------------------------------------------------------------
2026-11-25 10:00:05,000 - ScatterAndGather - INFO - [identity=simulator_server] - Round 3 started.
"""


def test_round_overhead_is_wall_minus_the_slower_sites_engine_time(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.write_text(SERVER_LOG)
    starts = bench.round_starts(log)
    assert sorted(starts) == [0, 1, 2, 3]
    assert starts[2] - starts[1] == pytest.approx(1.5, abs=1e-3)

    def rec(site: str, kind: str, engine: str, t0: float, t1: float, rss_mb: float) -> dict:
        return {
            "site": site,
            "kind": kind,
            "engine": engine,
            "start": starts[0] + t0,
            "end": starts[0] + t1,
            "rss": rss_mb * 2**20,
            "peak_rss": (rss_mb + 10) * 2**20,
        }

    probe = []
    for r, base in ((0, 0.0), (1, 2.0), (2, 3.5)):
        probe += [
            rec("site-1", "wrapper", "ClaraLearner", base + 0.1, base + 0.9, 0),
            rec("site-1", "engine", "SupervisedEvaluator", base + 0.2, base + 0.3, 500 + r),
            rec("site-1", "engine", "SupervisedTrainer", base + 0.3, base + 0.8, 500 + r),
            rec("site-2", "engine", "SupervisedTrainer", base + 0.2, base + 0.4, 400 + 3 * r),
        ]
    result = bench.analyse_fl(log, probe, warmup=1, memory_warmup=0)
    assert [r["round"] for r in result["rounds"]] == [1, 2]  # warm-up round 0 and the last round are left out
    first = result["rounds"][0]
    assert first["wall_s"] == pytest.approx(1.5, abs=1e-3)
    assert first["local_s"] == pytest.approx(0.6, abs=1e-3)  # site-1: 0.1 validate + 0.5 train
    assert first["overhead_s"] == pytest.approx(0.9, abs=1e-3)
    assert first["wrapper_glue_s"] == pytest.approx(0.2, abs=1e-3)  # 0.8 in the learner, 0.6 of it in engines
    assert result["memory"]["site-1"]["growth_mb_per_round"] == pytest.approx(1.0)
    assert result["memory"]["site-2"]["growth_mb_per_round"] == pytest.approx(3.0)
    assert result["memory"]["site-1"]["peak_rss_mb"] == pytest.approx(512)


def test_slope_and_table() -> None:
    assert bench.slope([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert bench.slope([5.0]) is None
    record = bench.Record(
        figure="x", measure="m", baseline="b", kind="ratio", value=1.01, unit="x", goal="<= 1.05", met=True
    )
    skipped = bench.Record(
        figure="7 GPU",
        measure="m",
        baseline="b",
        kind="skipped",
        value=None,
        unit="",
        goal="(GPU only)",
        met=None,
        note="skipped: no GPU lent",
    )
    text = bench.table([record, skipped])
    assert "1.010" in text and "skipped: no GPU lent" in text and "n/a" in text


def _arm(name: str, site_1: float, site_2: float) -> bench.Arm:
    return bench.Arm(name, {"site-1": site_1, "site-2": site_2})


def _arms(differing: dict[str, tuple[float, float]], skipped: tuple[str, ...] = ()) -> dict:
    identical = [_arm("centralized", 0.90, 0.90), _arm("site-1 alone", 0.85, 0.84), _arm("site-2 alone", 0.84, 0.85)]
    identical += [
        bench.Arm(n, skipped="skipped: refused") if n in skipped else _arm(n, 0.88, 0.89) for n in bench.ALGORITHMS
    ]
    other = [_arm(name, *differing[name]) for name in ("centralized", "site-1 alone", "site-2 alone")]
    other += [
        bench.Arm(n, skipped="skipped: refused") if n in skipped else _arm(n, *differing[n]) for n in bench.ALGORITHMS
    ]
    return {"identical": identical, "differing": other}


DIFFERING = {
    "centralized": (0.80, 0.78),
    "site-1 alone": (0.75, 0.40),
    "site-2 alone": (0.35, 0.70),
    "fedavg": (0.70, 0.66),
    "fedprox": (0.72, 0.67),
    "fedopt": (0.69, 0.60),
    "scaffold": (0.71, 0.68),
    "ditto": (0.78, 0.74),
    "fedbn": (0.74, 0.71),
}


def test_algorithm_goals_compare_fedavg_with_centralized_and_the_best_with_fedavg_and_each_site_alone() -> None:
    records = {r.figure: r for r in bench.figure_algorithms(_arms(DIFFERING), bench.QUICK)}

    assert records["8 identical sites: FedAvg"].value == pytest.approx(0.885 / 0.90)
    assert records["8 identical sites: FedAvg"].met is True
    best = records["8 differing sites: best vs FedAvg"]
    assert "ditto" in best.baseline and best.value == pytest.approx(0.76 / 0.68) and best.met is True
    alone = records["8 differing sites: best vs each site alone"]
    assert alone.samples == [pytest.approx(0.03), pytest.approx(0.04)] and alone.met is True
    assert records["8 quality: fedopt"].shown_value() == "0.885/0.880 | 0.645/0.600"


def test_algorithm_goal_is_missed_when_a_site_alone_does_better_on_its_own_data() -> None:
    differing = {**DIFFERING, "site-2 alone": (0.35, 0.80)}

    records = {r.figure: r for r in bench.figure_algorithms(_arms(differing), bench.QUICK)}

    assert records["8 differing sites: best vs each site alone"].met is False
    assert records["8 differing sites: best vs each site alone"].value == pytest.approx(-0.06)


def test_refused_algorithms_are_reported_skipped_and_fedavg_alone_cannot_meet_the_comparison() -> None:
    others = tuple(n for n in bench.ALGORITHMS if n != "fedavg")

    records = {r.figure: r for r in bench.figure_algorithms(_arms(DIFFERING, skipped=others), bench.QUICK)}

    assert records["8 quality: scaffold"].shown_value() == "skipped: refused | skipped: refused"
    assert records["8 differing sites: best vs FedAvg"].kind == "skipped"
    assert records["8 differing sites: best vs FedAvg"].met is None
    assert records["8 identical sites: FedAvg"].met is True


def test_cross_site_dice_reads_the_global_model_or_each_sites_own_model(tmp_path: Path) -> None:
    results = {
        "site-1": {
            "SRV_best_FL_global_model.pt": {"val_mean_dice": 0.95},
            "SRV_FL_global_model.pt": {"val_mean_dice": 0.8},
            "site-1": {"val_mean_dice": 0.9},
        },
        "site-2": {"SRV_FL_global_model.pt": {"val_mean_dice": 0.7}, "site-1": {"val_mean_dice": 0.5}},
    }
    folder = tmp_path / "ws" / "server" / "simulate_job" / "cross_site_val"
    folder.mkdir(parents=True)
    (folder / "cross_val_results.json").write_text(json.dumps(results))

    assert bench.cross_site_dice(tmp_path / "ws") == {"site-1": 0.8, "site-2": 0.7}
    assert bench.cross_site_dice(tmp_path / "ws", personalized=True) == {"site-1": 0.9}


def test_round_durations_leave_out_round_zero_and_bytes_per_round_come_from_consecutive_trainings(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.txt"
    log.write_text(SERVER_LOG)
    probe = [
        {"site": "site-1", "kind": "wrapper", "method": "train", "end": t, "bytes_sent": sent}
        for t, sent in ((1.0, 100), (2.0, 1100), (3.0, 2300), (4.0, 3300))
    ] + [{"site": "site-1", "kind": "wrapper", "method": "validate", "end": 2.5, "bytes_sent": 5000}]

    assert bench.round_durations(log) == [pytest.approx(1.5, abs=1e-3), pytest.approx(1.5, abs=1e-3)]
    assert bench.bytes_sent_per_round(probe) == {"site-1": 1000}


@pytest.mark.skipif(
    not os.environ.get("BENCH_SMOKE_FL"), reason="set BENCH_SMOKE_FL=1 to run the FL figures end to end"
)
def test_quick_algorithm_and_he_figures(tmp_path: Path) -> None:
    result = run_quick(tmp_path, "8,9")
    records = {r["figure"]: r for r in result["records"]}
    fedavg = records["8 quality: fedavg"]["detail"]
    for label in ("identical", "differing"):
        assert set(fedavg[label]["per_site"]) == {"site-1", "site-2"}, fedavg[label]
        assert set(records["8 quality: centralized"]["detail"][label]["per_site"]) == {"site-1", "site-2"}
    assert records["8 identical sites: FedAvg"]["value"] is not None
    he = [r for r in result["records"] if r["figure"].startswith("9 HE")]
    assert he and all(r["value"] is not None or r["note"].startswith("skipped: ") for r in he)


def test_probe_counts_the_bytes_a_process_sends_and_receives_on_its_sockets(tmp_path: Path) -> None:
    code = (
        "import socket, sitecustomize as probe\n"
        "a, b = socket.socketpair()\n"
        "a.sendall(b'x' * 1000); a.send(b'y' * 24)\n"
        "got = b.recv(4096); buf = bytearray(10); a.send(b'z' * 10); b.recv_into(buf)\n"
        "print(probe._BYTES['sent'], probe._BYTES['received'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(BENCH / "probe"), "CLARA_FL_BENCH_PROBE": str(tmp_path / "probe")}

    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1034", "1034"]
