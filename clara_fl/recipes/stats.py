"""ClaraFedStatsRecipe: FLARE 2.9's federated statistics of the sites' data, read from a Clara MMAR.

    recipe = ClaraFedStatsRecipe("mmars/spleen_ct_seg", min_count=10)
    recipe.execute(SimEnv(num_clients=2))   # or PocEnv(...), ProdEnv(startup_kit_location=...)
    recipe.export("jobs")                   # a job folder for ``nvflare job submit``

FLARE's statistics job (``StatsJob``: the ``StatisticsController`` on the server, the ``StatisticsExecutor`` and the
``StatisticsPrivacyFilter`` at the sites) with Clara's pieces: :class:`~clara_fl.fl.stats.generator.ClaraStatistics`
as every site's ``Statistics``, and the privacy cleansers of :mod:`clara_fl.fl.stats.privacy` (minimum count in
cases, per bin too; the site file may tighten each). The job's app folder is the MMAR (config/, custom/, docs/),
never its data. The server writes FLARE's result to ``statistics/flare_stats.json`` in the job's workspace;
:func:`clara_fl.fl.stats.summary.summarize` turns it into Clara's per-site summary.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nvflare.job_config.defs import FilterType
from nvflare.job_config.stats_job import StatsJob
from nvflare.recipe.spec import ExecEnv, Recipe

from clara_fl.config.errors import ConfigError
from clara_fl.fl.stats.generator import ClaraStatistics
from clara_fl.fl.stats.privacy import CaseMinCountCleanser, SiteHistogramBinsCleanser, SiteNoiseCleanser, StatsPrivacy
from clara_fl.recipes.app_folder import stage_mmar_files
from clara_fl.recipes.fresh_sites import allow_clara_classes
from clara_fl.recipes.job_folder import job_name

__all__ = ["ClaraFedStatsRecipe", "FLARE_STATS_FILE", "statistic_configs"]

FLARE_STATS_FILE = "statistics/flare_stats.json"
GENERATOR_ID = "stats_generator"
STATS_TASKS = ["fed_stats_pre_run", "fed_stats"]


def statistic_configs(bins: int) -> dict[str, Any]:
    """What the controller asks every site for: counts, sums, means, standard deviations, ``bins``-bin histograms.

    FLARE's quantile statistic needs the optional ``fastdigest`` package; Clara reads quantiles from the
    histograms instead (:func:`clara_fl.fl.stats.features.histogram_quantiles`).
    """
    return {"count": {}, "sum": {}, "mean": {}, "stddev": {}, "histogram": {"*": {"bins": bins}}}


class _ClaraStatsJob(StatsJob):
    """FLARE's StatsJob for every client (``@ALL``), with Clara's cleansers in its privacy filter."""

    def __init__(self, name: str, bins: int, generator: ClaraStatistics, privacy: StatsPrivacy) -> None:
        self.privacy = privacy
        super().__init__(
            name=name,
            statistic_configs=statistic_configs(bins),
            stats_generator=generator,
            output_path=FLARE_STATS_FILE,
            min_count=privacy.min_count,
            min_noise_level=privacy.min_noise_level,
            max_noise_level=privacy.max_noise_level,
            max_bins_percent=privacy.max_bins_percent,
        )
        from nvflare.app_common.executors.statistics.statistics_executor import StatisticsExecutor
        from nvflare.app_common.filters.statistics_privacy_filter import StatisticsPrivacyFilter

        self.to_clients(generator, id=GENERATOR_ID)
        self.to_clients(StatisticsExecutor(generator_id=GENERATOR_ID), tasks=STATS_TASKS)
        cleansers = [
            (CaseMinCountCleanser(min_count=privacy.min_count, generator_id=GENERATOR_ID), "min_count_cleanser"),
            (SiteNoiseCleanser(privacy.min_noise_level, privacy.max_noise_level), "min_max_noise_cleanser"),
            (SiteHistogramBinsCleanser(max_bins_percent=privacy.max_bins_percent), "hist_bins_cleanser"),
        ]
        ids = [self.to_clients(cleanser, id=cid) for cleanser, cid in cleansers]
        result_filter = StatisticsPrivacyFilter(result_cleanser_ids=ids)
        self.to_clients(result_filter, filter_type=FilterType.TASK_RESULT, tasks=["fed_stats"])


class ClaraFedStatsRecipe(Recipe):
    """Federated statistics of every site's data from a Clara MMAR, on FLARE's statistics workflow.

    Each site reads its datalists (the site file's data locations, as training does) through the MMAR's
    validation loader, cut before its first random, intensity or crop/pad transform, in the job's confined
    process under the site's code policy. Results: per site and over all sites, case counts, image shape and
    spacing, intensities inside and outside the label (or of the whole image), label fractions or class
    frequencies, and cases that failed to load (counted only).

    Args:
        mmar: the MMAR root folder (config/config_train.json inside).
        name: the job name (default: the MMAR folder's name with ``_stats``).
        min_count: cases every feature and every histogram bin must hold to leave a site.
        min_noise_level: the least relative noise on each site's min and max (which set the histogram range).
        max_noise_level: the most relative noise on them.
        max_bins_percent: a histogram's bins must stay under this percentage of its count.
        bins: histogram bins.
        datalist_keys: the datalist keys to describe (default: the MMAR's training and validation keys).
        sample_voxels: voxels per case and region kept for intensity histograms.
        overrides: values for the MMAR's variables, above the site file's.

    Raises:
        ConfigError: the folder is not an MMAR, or a privacy setting or ``bins`` is out of range.
    """

    def __init__(
        self,
        mmar: str | os.PathLike,
        name: str | None = None,
        min_count: int = 10,
        min_noise_level: float = 0.1,
        max_noise_level: float = 0.3,
        max_bins_percent: float = 10.0,
        bins: int = 20,
        datalist_keys: list[str] | None = None,
        sample_voxels: int = 20000,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.mmar = Path(mmar).resolve()
        if not (self.mmar / "config" / "config_train.json").is_file():
            raise ConfigError("not an MMAR: config/config_train.json is missing", file=str(self.mmar))
        self.privacy = StatsPrivacy(min_count, min_noise_level, max_noise_level, max_bins_percent).checked(
            "ClaraFedStatsRecipe"
        )
        for label, value in (("bins", bins), ("sample_voxels", sample_voxels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{label} must be a positive integer, got {value!r}", file="ClaraFedStatsRecipe")
        generator = ClaraStatistics(
            datalist_keys=list(datalist_keys or []),
            sample_voxels=sample_voxels,
            overrides=dict(overrides or {}),
            job_privacy=dataclasses.asdict(self.privacy),
        )
        job = _ClaraStatsJob(job_name(name or f"{self.mmar.name}_stats"), bins, generator, self.privacy)
        job.set_app_packages(["clara_fl"])  # installed at every site: never copied into the job's custom/
        self._staging = tempfile.TemporaryDirectory(prefix="clara_fl_stats_recipe_")
        staging = Path(self._staging.name)
        copied = stage_mmar_files(self.mmar, None, staging)
        job.add_file_to_clients(str(staging / "config"), app_folder_type="config")
        if "custom" in copied:
            job.add_file_to_clients(str(staging / "custom"), app_folder_type="custom")
        super().__init__(job)

    def process_env(self, env: ExecEnv) -> None:
        """Sites that ``env`` makes afresh get to build clara-fl's classes, the clients only: the server's app
        holds FLARE's components (:func:`clara_fl.recipes.fresh_sites.allow_clara_classes`)."""
        allow_clara_classes(self, env, Path(self._staging.name), to_server=False)
