"""Nothing identifying leaves a site: a real 2-site simulation in which site-2's data sits in a hospital archive
folder and one of its cases, named by a patient and accession number, is cut off. site-2 fails every task on it;
the server learns which config item failed, and its workspace holds neither the case's name nor the folder's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clara_fl.fl.jobs.results import find_cross_site_results, load_cross_site_failures
from tests.test_fl_simulation import fl_data, simulate, site_file  # noqa: F401  (fixtures used below)

pytestmark = pytest.mark.e2e

ARCHIVE = "ZZ-Hospital-Radiology-Archive"
CASE = "MRN-4471923-ACC-88120.nii.gz"
IDENTIFIERS = (ARCHIVE, CASE)


@pytest.fixture(scope="module")
def site_2_in_an_archive(fl_data) -> None:  # noqa: F811
    """site-2's cases moved under ``<data root>/ZZ-Hospital-Radiology-Archive/``; its validation case renamed to a
    patient-number file name and cut to its first 100 bytes, so that no reader can open it."""
    datalist_file = fl_data.site_datalists["site-2"]
    datalist = json.loads(datalist_file.read_text())
    for item in datalist["training"] + datalist["validation"]:
        for key in ("image", "label"):
            moved = Path(ARCHIVE) / item[key]
            (fl_data.root / moved).parent.mkdir(parents=True, exist_ok=True)
            (fl_data.root / item[key]).rename(fl_data.root / moved)
            item[key] = str(moved)
    corrupt = fl_data.root / datalist["validation"][0]["image"]
    renamed = corrupt.with_name(CASE)
    renamed.write_bytes(corrupt.read_bytes()[:100])
    corrupt.unlink()
    datalist["validation"][0]["image"] = str(renamed.relative_to(fl_data.root))
    datalist_file.write_text(json.dumps(datalist, indent=2))


def files_holding(folder: Path, text: str) -> list[str]:
    """Every file under ``folder`` whose name or bytes hold ``text``."""
    needle = text.encode()
    return [
        str(path.relative_to(folder))
        for path in sorted(folder.rglob("*"))
        if text in str(path.relative_to(folder)) or (path.is_file() and needle in path.read_bytes())
    ]


def test_no_case_name_or_data_path_reaches_the_server(
    tmp_path: Path,
    site_file: Path,  # noqa: F811
    site_2_in_an_archive: None,
) -> None:
    _, workspace, results = simulate(tmp_path, site_file, "clara_fedavg_cse", rounds=1, local_epochs=1, min_clients=1)

    # the failure was real, and the server heard of it: which task, which config item, which kind
    results_file = find_cross_site_results(workspace)
    assert results_file is not None
    failures = load_cross_site_failures(results_file)
    assert failures.models["site-2"].startswith(
        "EXECUTION_EXCEPTION: cannot build this site's trainer: ImageFileError at config/config_train.json: "
    )
    assert "val_mean_dice" in results["site-1"]["SRV_FL_global_model.pt"]
    # ... and nothing that names the hospital's archive or the patient, anywhere on the server
    server = workspace / "server"
    assert {text: files_holding(server, text) for text in IDENTIFIERS} == {text: [] for text in IDENTIFIERS}
    received = json.dumps(results) + results_file.with_name("cross_val_failures.json").read_text()
    assert [text for text in IDENTIFIERS if text in received] == []
    # while the site's own log tells the whole story
    site_log = (workspace / "site-2" / "log.txt").read_text()
    assert all(text in site_log for text in IDENTIFIERS)
