"""Smoke test of the benchmark suite end to end (not collected by ``make test``, whose testpaths are tests/; the
harness's and the figures' pure parts are tested there, in tests/test_bench_harness.py and test_bench_figures.py).

    .venv/bin/python -m pytest -q bench/test_bench_smoke.py                  # < 60 s on 2 idle cores
    BENCH_SMOKE_FL=1 .venv/bin/python -m pytest -q bench/test_bench_smoke.py  # also the FL figures (~2 more minutes)

The quick standalone run checks that every side really trains (the same final val_mean_dice on
both sides is the proof that A and B are the same training); the FL figures run end to end only when asked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent

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
