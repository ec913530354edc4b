"""A site's own privacy policy: ``clara-fl site setup KIT --privacy ...`` writes a FLARE privacy scope."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clara_fl.cli import main
from tests.test_site_setup import make_kit

PERCENTILE = "PercentilePrivacy:percentile=10,gamma=0.01"


def flare_privacy_manager(kit: Path):
    from nvflare.apis.workspace import Workspace
    from nvflare.private.fed.app.fl_conf import create_privacy_manager

    return create_privacy_manager(Workspace(str(kit), "site-1"), names_only=False, is_server=False)


def test_site_privacy_filters_become_the_sites_default_scope_that_flare_applies_to_what_it_sends(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from nvflare.apis.fl_constant import FilterKey
    from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy

    kit = make_kit(tmp_path / "site-1")

    assert main(["site", "setup", str(kit), "--privacy", PERCENTILE]) == 0

    assert "site privacy filters: PercentilePrivacy" in capsys.readouterr().out
    manager = flare_privacy_manager(kit)
    assert manager.is_policy_defined() and manager.default_scope.name == "clara_fl_site"
    [sent] = manager.default_scope.task_result_filters[FilterKey.OUT]
    assert isinstance(sent, PercentilePrivacy) and (sent.percentile, sent.gamma) == (10, 0.01)
    assert sent.data_kinds == ["WEIGHT_DIFF"], "train updates are filtered, submitted models for validation are not"


def test_site_privacy_is_replaced_not_repeated_and_none_removes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    kit = make_kit(tmp_path / "site-1")
    main(["site", "setup", str(kit), "--privacy", PERCENTILE])

    assert main(["site", "setup", str(kit), "--privacy", PERCENTILE]) == 0
    assert "(unchanged)" in capsys.readouterr().out
    assert main(["site", "setup", str(kit), "--privacy", "none"]) == 0

    policy = json.loads((kit / "local" / "privacy.json").read_text())
    assert policy["scopes"] == [] and "default_scope" not in policy
    assert not flare_privacy_manager(kit).is_policy_defined()


def test_an_unknown_privacy_filter_is_a_one_line_error_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    kit = make_kit(tmp_path / "site-1")

    assert main(["site", "setup", str(kit), "--privacy", "GaussianNoise:sigma=1"]) == 2

    err = capsys.readouterr().err.strip()
    assert "--privacy" in err and "GaussianNoise" in err and "\n" not in err
    assert sorted(p.name for p in (kit / "local").iterdir()) == ["resources.json.default"]
