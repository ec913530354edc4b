"""The memory and scale figures' pure parts (figure 5's long run, figure 10): RSS series per process from the probe's
records, a site's two processes together, the slopes and records, the round gaps, and the process-tree sampler."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from bench.figures.fig5_memory import long_run_records
from bench.figures.fig10_scale import round_gaps, scale_records
from bench.harness.memory import TreeRss, descendants, last_thread_names, round_series, site_totals
from bench.harness.settings import Settings


def probe_record(kind: str, site: str, engine: str, method: str, end: float, rss_mb: float) -> dict[str, Any]:
    return {"kind": kind, "site": site, "engine": engine, "method": method, "end": end, "rss": int(rss_mb * 2**20)}


def test_round_series_name_each_process_by_its_round_marking_call_in_time_order() -> None:
    probe = [
        probe_record("engine", "site-1", "SupervisedTrainer", "run", 2.0, 101),
        probe_record("engine", "site-1", "SupervisedTrainer", "run", 1.0, 100),
        probe_record("engine", "site-1", "SupervisedEvaluator", "run", 1.5, 999),
        probe_record("wrapper", "site-1", "ClaraLearner", "train", 1.1, 50),
        probe_record("wrapper", "site-1", "ClaraLearner", "validate", 1.2, 999),
        probe_record("server", "?", "ClaraModelPersistor", "save_model", 1.3, 70),
        probe_record("engine", "?", "SupervisedTrainer", "run", 1.4, 999),
    ]

    series = round_series(probe)

    assert series == {"site-1 training": [100.0, 101.0], "site-1 FLARE": [50.0], "server": [70.0]}


def test_the_thread_count_series_follow_the_same_round_marking_calls_unscaled() -> None:
    records = [
        {**probe_record("server", "?", "ClaraModelPersistor", "save_model", 2.0, 70), "threads": 80},
        {**probe_record("server", "?", "ClaraModelPersistor", "save_model", 1.0, 70), "threads": 60},
        {**probe_record("wrapper", "site-1", "ClaraLearner", "validate", 1.5, 50), "threads": 999},
    ]

    assert round_series(records, "threads") == {"server": [60, 80]}


def test_a_processs_thread_names_are_those_of_its_last_round() -> None:
    records = [
        {**probe_record("server", "?", "ClaraModelPersistor", "save_model", 2.0, 70), "thread_names": {"Thread-#": 9}},
        {**probe_record("server", "?", "ClaraModelPersistor", "save_model", 1.0, 70), "thread_names": {"Thread-#": 3}},
    ]

    assert last_thread_names(records, "server") == {"Thread-#": 9}
    assert last_thread_names(records, "site-1 FLARE") == {}


def test_a_sites_rss_is_its_training_and_flare_processes_together_over_the_rounds_both_recorded() -> None:
    series = {"site-1 training": [100.0, 101.0, 102.0], "site-1 FLARE": [50.0, 52.0], "server": [70.0]}

    assert site_totals(series) == {"site-1": [150.0, 153.0]}


def test_the_long_run_reports_the_larger_sites_growth_and_the_servers_after_the_warm_up() -> None:
    settings = Settings(memory_rounds=6, memory_long_warmup_rounds=2)
    flat, growing = [100.0] * 6, [100.0, 300.0, 100.0, 102.0, 104.0, 106.0]  # +2 MB a round after the warm-up
    series = {
        "site-1 training": flat,
        "site-1 FLARE": flat,
        "site-2 training": growing,
        "site-2 FLARE": flat,
        "server": [200.0, 0.0, 200.0, 200.5, 201.0, 201.5],
    }

    site, server = long_run_records(series, settings, {"process_wall_s": 1.0})

    assert site.value == pytest.approx(2.0) and site.met is False
    assert server.value == pytest.approx(0.5) and server.met is True
    assert site.detail["site_growth_mb_per_round"] == {"site-1": 0.0, "site-2": 2.0}


def test_the_long_run_without_a_series_has_no_value_and_does_not_meet_its_goal() -> None:
    site, server = long_run_records({}, Settings(memory_rounds=6, memory_long_warmup_rounds=2), {})

    assert (site.value, site.met, server.value, server.met) == (None, False, None, False)


def test_round_gaps_leave_out_round_0_which_holds_the_start_up() -> None:
    assert round_gaps({0: 0.0, 1: 30.0, 2: 32.0, 3: 35.0}) == [2.0, 3.0]


def test_the_scale_figure_reports_round_time_and_peak_memory_for_each_number_of_sites() -> None:
    runs = {
        4: {"round_s": 5.0, "round_gaps_s": [5.0], "peak_rss_mb": 4000.0, "processes_at_peak": 10},
        2: {"round_s": 3.0, "round_gaps_s": [3.0], "peak_rss_mb": 2000.0, "processes_at_peak": 6},
    }

    records = scale_records(runs, Settings())

    assert [(r.figure, r.value, r.unit) for r in records] == [
        ("10 sites per machine: 2 sites, round time", 3.0, "s"),
        ("10 sites per machine: 2 sites, peak memory", 2000.0, "MB"),
        ("10 sites per machine: 4 sites, round time", 5.0, "s"),
        ("10 sites per machine: 4 sites, peak memory", 4000.0, "MB"),
    ]
    assert all(r.met is None for r in records)


def test_descendants_are_found_at_any_depth_and_exclude_the_root() -> None:
    children = {1: [2, 3], 3: [4], 4: [5], 9: [10]}

    assert sorted(descendants(1, children)) == [2, 3, 4, 5]


def test_the_tree_sampler_adds_up_the_rss_of_this_processs_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        sampler = TreeRss()
        total = sampler.sample()
    finally:
        child.kill()
        child.wait()

    assert total > 1_000_000 and sampler.peak_bytes == total and sampler.peak_processes >= 1


def test_the_probe_counts_a_processs_python_threads_by_name_with_their_numbers_folded() -> None:
    import threading

    from bench.probe.sitecustomize import _thread_names

    release = threading.Event()
    threads = [threading.Thread(target=release.wait, name=f"stm_{n}") for n in (3, 17)]
    for thread in threads:
        thread.start()
    try:
        names = _thread_names()
    finally:
        release.set()
        for thread in threads:
            thread.join()

    assert names["stm_#"] == 2 and names["MainThread"] == 1


def test_the_probe_names_a_timer_thread_by_the_function_it_will_call() -> None:
    import threading

    from bench.probe.sitecustomize import _thread_names

    def remove_task() -> None:
        pass

    timer = threading.Timer(60.0, remove_task)
    timer.start()
    try:
        names = _thread_names()
    finally:
        timer.cancel()
        timer.join()

    assert names[f"Timer ({remove_task.__qualname__})"] == 1
