"""The statistics privacy filters of a Clara stats job: FLARE's cleansers, counting cases, tightened by the site.

FLARE's ``StatisticsPrivacyFilter`` runs a chain of cleansers on a site's result before it leaves the site. A
Clara stats job uses FLARE's three, with two differences:

- **Minimum count counts cases** (:class:`CaseMinCountCleanser`): a feature held by fewer cases than ``min_count``
  is removed (FLARE's ``MinCountCleanser`` counts values, which for an intensity feature are voxels), and so is
  every histogram bin that fewer than ``min_count`` cases put anything into: its count is sent as 0.
- **The site file can tighten every filter** (never loosen it): ``"statistics": {"min_count": 20,
  "min_noise_level": 0.2, "max_noise_level": 0.5, "max_bins_percent": 5}`` in the site file
  (``local/clara_fl_site.json`` or ``$CLARA_FL_SITE_CONFIG``). The stricter of the job's and the site's value
  applies: the larger minimum count and noise levels, the smaller bins percentage.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.statistics_spec import Bin, Histogram
from nvflare.app_common.app_constant import StatisticsConstants as StC
from nvflare.app_common.statistics.histogram_bins_cleanser import HistogramBinsCleanser
from nvflare.app_common.statistics.min_count_cleanser import MinCountCleanser
from nvflare.app_common.statistics.min_max_cleanser import AddNoiseToMinMax

from clara_fl.config.errors import ConfigError

__all__ = [
    "SITE_KEY",
    "StatsPrivacy",
    "site_privacy",
    "CaseMinCountCleanser",
    "SiteNoiseCleanser",
    "SiteHistogramBinsCleanser",
    "suppress_small_bins",
]

logger = logging.getLogger(__name__)

SITE_KEY = "statistics"


@dataclass(frozen=True)
class StatsPrivacy:
    """A stats job's privacy settings (FLARE's FedStatsRecipe defaults).

    Args:
        min_count: cases a feature, and each histogram bin, must hold to be sent.
        min_noise_level: the least relative noise on a site's min and max (0..1).
        max_noise_level: the most relative noise on a site's min and max (0..1).
        max_bins_percent: a histogram's bins must stay under this percentage of its count (0..100].
    """

    min_count: int = 10
    min_noise_level: float = 0.1
    max_noise_level: float = 0.3
    max_bins_percent: float = 10.0

    def checked(self, where: str, prefix: str = "") -> StatsPrivacy:
        """These settings, or the first bad one as a one-line ConfigError naming ``where`` and the key.

        Raises:
            ConfigError: a value of the wrong kind or out of range.
        """

        def fail(key: str, expected: str, value: Any) -> ConfigError:
            return ConfigError(f"must be {expected}, got {value!r}", file=where, path=f"{prefix}{key}")

        if isinstance(self.min_count, bool) or not isinstance(self.min_count, int) or self.min_count < 1:
            raise fail("min_count", "a positive integer", self.min_count)
        for key in ("min_noise_level", "max_noise_level"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise fail(key, "a number from 0 to 1", value)
        if self.min_noise_level > self.max_noise_level:
            raise fail("max_noise_level", f"at least min_noise_level ({self.min_noise_level})", self.max_noise_level)
        value = self.max_bins_percent
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
            raise fail("max_bins_percent", "a number above 0 and at most 100", value)
        return self

    def tightened(self, site: StatsPrivacy) -> StatsPrivacy:
        """The stricter of these (the job's) and the site's settings, field by field."""
        low = max(self.min_noise_level, site.min_noise_level)
        return StatsPrivacy(
            min_count=max(self.min_count, site.min_count),
            min_noise_level=low,
            max_noise_level=max(self.max_noise_level, site.max_noise_level, low),
            max_bins_percent=min(self.max_bins_percent, site.max_bins_percent),
        )


def site_privacy(job: StatsPrivacy, site_content: Mapping[str, Any], site_file: str | None) -> StatsPrivacy:
    """The job's settings tightened by the site file's ``statistics`` object (absent: the job's as they are).

    Raises:
        ConfigError: the object, a key or a value is wrong, naming the site file and the key.
    """
    where = site_file or "site file"
    given = site_content.get(SITE_KEY)
    if given is None:
        return job
    if not isinstance(given, dict):
        raise ConfigError("must be an object of privacy settings (docs/fl.md, statistics)", file=where, path=SITE_KEY)
    fields = {f.name for f in dataclasses.fields(StatsPrivacy)}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ConfigError(
            f"unknown key (expected one of {', '.join(sorted(fields))})", file=where, path=f"{SITE_KEY}.{unknown[0]}"
        )
    # a key the site leaves out takes the job's value, so the site's noise range is checked against it
    site = dataclasses.replace(job, **given).checked(where, prefix=f"{SITE_KEY}.")
    return job.tightened(site)


def suppress_small_bins(histogram: Histogram, bin_cases: list[int], min_count: int) -> tuple[Histogram, bool]:
    """The histogram with the count of every bin held by fewer than ``min_count`` cases set to 0."""
    bins, changed = [], False
    for i, b in enumerate(histogram.bins):
        cases = bin_cases[i] if i < len(bin_cases) else 0
        if b.sample_count > 0 and cases < min_count:
            bins.append(Bin(b.low_value, b.high_value, 0.0))
            changed = True
        else:
            bins.append(b)
    return Histogram(histogram.hist_type, bins, histogram.hist_name), changed


class _SiteTightened:
    """Reads the site file's ``statistics`` at the start of the run and applies the stricter settings."""

    def _job_privacy(self) -> StatsPrivacy:
        raise NotImplementedError

    def _apply_privacy(self, privacy: StatsPrivacy) -> None:
        raise NotImplementedError

    def tighten_from_site(self, fl_ctx: FLContext) -> StatsPrivacy:
        from clara_fl.fl.site.context import find_site_file, read_site_file

        workspace = fl_ctx.get_engine().get_workspace()
        site_file = find_site_file(workspace.get_root_dir())
        content = read_site_file(site_file) if site_file else {}
        privacy = site_privacy(self._job_privacy(), content, site_file)
        self._apply_privacy(privacy)
        return privacy


class CaseMinCountCleanser(MinCountCleanser, _SiteTightened):
    """FLARE's minimum count, counted in cases, per feature and per histogram bin (see the module docstring).

    Args:
        min_count: the job's minimum; the site file may raise it.
        generator_id: the site's :class:`~clara_fl.fl.stats.generator.ClaraStatistics` component, which knows the
            cases behind every feature and bin.
    """

    def __init__(self, min_count: int, generator_id: str = "stats_generator") -> None:
        super().__init__(min_count=min_count)
        self.generator_id = generator_id
        self._job_min_count = min_count
        self._generator: Any = None

    def _job_privacy(self) -> StatsPrivacy:
        return StatsPrivacy(min_count=int(self._job_min_count))

    def _apply_privacy(self, privacy: StatsPrivacy) -> None:
        self.min_count = privacy.min_count

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self.tighten_from_site(fl_ctx)
            self._generator = fl_ctx.get_engine().get_component(self.generator_id)

    def _case_count(self, dataset: str, feature: str, fallback: int) -> int:
        counter = getattr(self._generator, "case_count", None)
        return int(counter(dataset, feature)) if counter is not None else fallback

    def min_count_validate(self, client_name: str, statistics: dict) -> dict[str, dict[str, bool]]:
        valid: dict[str, dict[str, bool]] = {}
        for dataset, counts in statistics.get(StC.STATS_COUNT, {}).items():
            valid[dataset] = {}
            for feature, count in counts.items():
                failures = statistics.get(StC.STATS_FAILURE_COUNT, {}).get(dataset, {}).get(feature, 0)
                cases = self._case_count(dataset, feature, int(count) - int(failures))
                valid[dataset][feature] = cases >= self.min_count
                if cases < self.min_count:
                    self.logger.info(f"{dataset} '{feature}': {cases} case(s), fewer than {self.min_count}: removed")
        return valid

    def apply(self, statistics: dict, client_name: str) -> tuple[dict, bool]:
        statistics, modified = super().apply(statistics, client_name)
        bin_cases = getattr(self._generator, "bin_cases", None)
        for dataset, features in statistics.get(StC.STATS_HISTOGRAM, {}).items():
            for feature, histogram in list(features.items()):
                cases = bin_cases(dataset, feature) if bin_cases is not None else []
                features[feature], changed = suppress_small_bins(histogram, cases, self.min_count)
                modified = modified or changed
        return statistics, modified


class SiteNoiseCleanser(AddNoiseToMinMax, _SiteTightened):
    """FLARE's noise on a site's min and max, its levels raised by the site file's ``statistics``.

    Args:
        min_noise_level: the job's least relative noise.
        max_noise_level: the job's most relative noise.
    """

    def __init__(self, min_noise_level: float, max_noise_level: float) -> None:
        super().__init__(min_noise_level=min_noise_level, max_noise_level=max_noise_level)
        self._job_levels = (min_noise_level, max_noise_level)

    def _job_privacy(self) -> StatsPrivacy:
        return StatsPrivacy(min_noise_level=self._job_levels[0], max_noise_level=self._job_levels[1])

    def _apply_privacy(self, privacy: StatsPrivacy) -> None:
        self.min_noise_level, self.max_noise_level = privacy.min_noise_level, privacy.max_noise_level
        self.noise_level = (privacy.min_noise_level, privacy.max_noise_level)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self.tighten_from_site(fl_ctx)


class SiteHistogramBinsCleanser(HistogramBinsCleanser, _SiteTightened):
    """FLARE's limit on histogram bins per count, lowered by the site file's ``statistics``.

    Args:
        max_bins_percent: the job's limit.
    """

    def __init__(self, max_bins_percent: float) -> None:
        super().__init__(max_bins_percent=max_bins_percent)
        self._job_percent = max_bins_percent

    def _job_privacy(self) -> StatsPrivacy:
        return StatsPrivacy(max_bins_percent=self._job_percent)

    def _apply_privacy(self, privacy: StatsPrivacy) -> None:
        self.max_bins_percent = privacy.max_bins_percent

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self.tighten_from_site(fl_ctx)
