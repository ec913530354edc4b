"""The benchmark figures (bench/figures): the registry, the runs figures share, and each figure's analysis of its
runs on canned inputs (server logs, probe records, cross-site tables, per-arm Dice)."""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import bench.figures
from bench.figures import FIGURES, fig1_standalone, fig3_bundle_peer, standalone_runs
from bench.figures.fedavg_runs import analyse_fl, slope
from bench.figures.fig8_algorithms import ALGORITHMS, Arm, algorithm_records, cross_site_dice
from bench.figures.fig9_he import bytes_sent_per_round, round_durations
from bench.harness.federated import round_starts
from bench.harness.figure import Context, Figure
from bench.harness.processes import Run
from bench.harness.settings import QUICK
from tests.test_bench_harness import SERVER_LOG


def test_every_figure_module_registers_its_figure_under_its_number() -> None:
    modules = [m.name for m in pkgutil.iter_modules(bench.figures.__path__) if m.name.startswith("fig")]

    figures = [importlib.import_module(f"bench.figures.{name}").FIGURE for name in sorted(modules)]

    assert list(FIGURES) == [str(n) for n in range(1, 12)]
    assert [FIGURES[f.number] for f in figures] == figures
    for name, figure in zip(sorted(modules), figures, strict=True):
        assert isinstance(figure, Figure) and name.startswith(f"fig{figure.number}_"), name
        assert figure.title and callable(figure.measure)


def fake_run(name: str, wall_s: float, cpu_s: float, dice: float = 0.5) -> Run:
    return Run(name, 0, wall_s, cpu_s, first_iteration_s=1.0, final_val_dice=dice, log=Path("log"))


def test_figures_1_and_3_read_one_set_of_standalone_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = []

    def run_standalone(ctx: Context) -> list[dict[str, Run]]:
        runs.append(ctx)
        sides = {"clara-fl": (9.0, 8.0), "hand-written": (10.0, 10.0), "monai-bundle": (12.0, 11.0)}
        return [{name: fake_run(name, *times) for name, times in sides.items()}]

    monkeypatch.setattr(standalone_runs, "run_standalone", run_standalone)
    ctx = Context(QUICK, tmp_path / "data", tmp_path / "work", log=lambda line: None)

    records = fig1_standalone.FIGURE.measure(ctx) + fig3_bundle_peer.FIGURE.measure(ctx)

    assert len(runs) == 1
    assert [(r.figure, r.value) for r in records] == [
        ("1 standalone overhead", pytest.approx(0.9)),
        ("1 standalone overhead (CPU)", pytest.approx(0.8)),
        ("3 bundle peer", pytest.approx(0.75)),
    ]
    assert records[0].detail["same_training"] is True and records[0].met is True


def test_round_overhead_is_wall_minus_the_slower_sites_engine_time(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.write_text(SERVER_LOG)
    zero = round_starts(log)[0]

    def rec(site: str, kind: str, engine: str, t0: float, t1: float, rss_mb: float) -> dict:
        return {
            "site": site,
            "kind": kind,
            "engine": engine,
            "start": zero + t0,
            "end": zero + t1,
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

    result = analyse_fl(log, probe, warmup=1, memory_warmup=0)

    assert [r["round"] for r in result["rounds"]] == [1, 2]  # warm-up round 0 and the last round are left out
    first = result["rounds"][0]
    assert first["wall_s"] == pytest.approx(1.5, abs=1e-3)
    assert first["local_s"] == pytest.approx(0.6, abs=1e-3)  # site-1: 0.1 validate + 0.5 train
    assert first["overhead_s"] == pytest.approx(0.9, abs=1e-3)
    assert first["wrapper_glue_s"] == pytest.approx(0.2, abs=1e-3)  # 0.8 in the learner, 0.6 of it in engines
    assert result["memory"]["site-1"]["growth_mb_per_round"] == pytest.approx(1.0)
    assert result["memory"]["site-2"]["growth_mb_per_round"] == pytest.approx(3.0)
    assert result["memory"]["site-1"]["peak_rss_mb"] == pytest.approx(512)


def test_the_memory_slope_is_least_squares_and_needs_two_rounds() -> None:
    assert slope([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert slope([1.0, 3.0, 2.0, 4.0]) == pytest.approx(0.8)
    assert slope([5.0]) is None


def _arm(name: str, site_1: float, site_2: float) -> Arm:
    return Arm(name, {"site-1": site_1, "site-2": site_2})


def _arms(differing: dict[str, tuple[float, float]], skipped: tuple[str, ...] = ()) -> dict[str, list[Arm]]:
    identical = [_arm("centralized", 0.90, 0.90), _arm("site-1 alone", 0.85, 0.84), _arm("site-2 alone", 0.84, 0.85)]
    identical += [Arm(n, skipped="skipped: refused") if n in skipped else _arm(n, 0.88, 0.89) for n in ALGORITHMS]
    other = [_arm(name, *differing[name]) for name in ("centralized", "site-1 alone", "site-2 alone")]
    other += [Arm(n, skipped="skipped: refused") if n in skipped else _arm(n, *differing[n]) for n in ALGORITHMS]
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
    records = {r.figure: r for r in algorithm_records(_arms(DIFFERING), QUICK)}

    assert records["8 identical sites: FedAvg"].value == pytest.approx(0.885 / 0.90)
    assert records["8 identical sites: FedAvg"].met is True
    best = records["8 differing sites: best vs FedAvg"]
    assert "ditto" in best.baseline and best.value == pytest.approx(0.76 / 0.68) and best.met is True
    alone = records["8 differing sites: best vs each site alone"]
    assert alone.samples == [pytest.approx(0.03), pytest.approx(0.04)] and alone.met is True
    assert records["8 quality: fedopt"].shown_value() == "0.885/0.880 | 0.645/0.600"


def test_algorithm_goal_is_missed_when_a_site_alone_does_better_on_its_own_data() -> None:
    differing = {**DIFFERING, "site-2 alone": (0.35, 0.80)}

    records = {r.figure: r for r in algorithm_records(_arms(differing), QUICK)}

    assert records["8 differing sites: best vs each site alone"].met is False
    assert records["8 differing sites: best vs each site alone"].value == pytest.approx(-0.06)


def test_refused_algorithms_are_reported_skipped_and_fedavg_alone_cannot_meet_the_comparison() -> None:
    others = tuple(n for n in ALGORITHMS if n != "fedavg")

    records = {r.figure: r for r in algorithm_records(_arms(DIFFERING, skipped=others), QUICK)}

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

    assert cross_site_dice(tmp_path / "ws") == {"site-1": 0.8, "site-2": 0.7}
    assert cross_site_dice(tmp_path / "ws", personalized=True) == {"site-1": 0.9}


def test_he_round_durations_leave_out_round_zero(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.write_text(SERVER_LOG)

    assert round_durations(log) == [pytest.approx(1.5, abs=1e-3), pytest.approx(1.5, abs=1e-3)]


def test_bytes_sent_per_round_come_from_consecutive_local_trainings() -> None:
    probe = [
        {"site": "site-1", "kind": "wrapper", "method": "train", "end": t, "bytes_sent": sent}
        for t, sent in ((1.0, 100), (2.0, 1100), (3.0, 2300), (4.0, 3300))
    ] + [{"site": "site-1", "kind": "wrapper", "method": "validate", "end": 2.5, "bytes_sent": 5000}]

    assert bytes_sent_per_round(probe) == {"site-1": 1000}
