"""ClaraStatistics: FLARE's ``Statistics`` for a site's data, read from an MMAR in the job's confined process.

At the start of the run the site's confined process (:mod:`clara_fl.fl.site.site_process`, the same process and
rules a training job gets) reads every case of the MMAR's datalists through the MMAR's loader
(:mod:`clara_fl.fl.stats.loading`) and sends back per-case summaries without names
(:mod:`clara_fl.fl.stats.features`). FLARE's ``StatisticsExecutor`` then asks this component for counts, sums,
means, variances, extremes and histograms, which it answers from those summaries; the privacy filters
(:mod:`clara_fl.fl.stats.privacy`) cleanse the answer before it leaves the site.
"""

from __future__ import annotations

from typing import Any

from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.statistics_spec import Bin, DataType, Feature, Histogram, HistogramType, Statistics

from clara_fl.fl.stats.features import CaseSummary, DatasetFeatures

__all__ = ["ClaraStatistics", "datasets_from_payload"]


def datasets_from_payload(payload: Any) -> dict[str, DatasetFeatures]:
    """The confined process's reply as one :class:`DatasetFeatures` per datalist key.

    Raises:
        TypeError, ValueError, KeyError: the reply is not what the ``data_stats`` task sends.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"expected an object, got {type(payload).__name__}")
    out = {}
    for key, record in payload.items():
        cases = [CaseSummary.from_record(c) for c in record["cases"]]
        out[str(key)] = DatasetFeatures(cases, failed=int(record["failed"]))
    return out


class ClaraStatistics(Statistics):
    """A site's data statistics from the job's MMAR (its datalists, read through its validation loader).

    Args:
        validation_config: the config whose pre-transforms load the data (else the train config's ``validate``).
        environment: the MMAR's environment file; the site file's values sit above it.
        datalist_keys: the datalist keys to describe (default: the MMAR's TRAIN_DATALIST_KEY and VAL_DATALIST_KEY).
        sample_voxels: voxels per case and region kept for the intensity histograms.
        overrides: variables set by the job, above everything else.
        job_privacy: the job's privacy settings (``{"min_count": ..., ...}``), checked with the site file's at start.
    """

    def __init__(
        self,
        validation_config: str = "config/config_validation.json",
        environment: str = "config/environment.json",
        datalist_keys: list[str] | None = None,
        sample_voxels: int = 20000,
        overrides: dict[str, Any] | None = None,
        job_privacy: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.validation_config = validation_config
        self.environment = environment
        self.datalist_keys = list(datalist_keys or [])
        self.sample_voxels = sample_voxels
        self.overrides = dict(overrides or {})
        self.job_privacy = dict(job_privacy or {})
        self.datasets: dict[str, DatasetFeatures] = {}

    def initialize(self, fl_ctx: FLContext) -> None:
        """Read the site's cases in the job's confined process (see the module docstring).

        Raises:
            RuntimeError: the site could not read its data; the reason is in the site's log, only its kind here.
        """
        from clara_fl.fl.site.learner import process_spec, site_settings
        from clara_fl.fl.site.local_training import SiteTaskFailed
        from clara_fl.fl.site.site_process import close_site, open_site
        from clara_fl.fl.stats.loading import StatsSettings
        from clara_fl.fl.stats.privacy import StatsPrivacy, site_privacy

        try:
            from clara_fl.fl.site.context import read_site_file, site_context

            site = site_context(fl_ctx)
            content = read_site_file(site.site_file) if site.site_file else {}
            privacy = site_privacy(StatsPrivacy(**self.job_privacy), content, site.site_file)
            self.log_info(fl_ctx, f"statistics privacy at this site: {privacy}")
            settings = StatsSettings(
                **site_settings(site),
                environment=self.environment,
                overrides=self.overrides,
                validation_config=self.validation_config,
                datalist_keys=self.datalist_keys,
                sample_voxels=self.sample_voxels,
            )
            backend = open_site(process_spec(site))
            try:
                import dataclasses

                _, payload = backend.call("data_stats", {"settings": dataclasses.asdict(settings)})
            finally:
                close_site(site.app_dir)  # a stats job reads once: the process is not kept
            self.datasets = datasets_from_payload(payload)
        except SiteTaskFailed as e:
            self.log_error(fl_ctx, e.failure.local_text(), fire_event=False)
            raise RuntimeError(f"data statistics failed at this site: {e.failure.public_text(False)}") from None
        except Exception as e:  # a bad site file or reply: the site's log has it, the server only its kind
            self.log_error(fl_ctx, f"data statistics failed at this site: {e}", fire_event=False)
            raise RuntimeError(f"data statistics failed at this site ({type(e).__name__})") from None
        for key, dataset in self.datasets.items():
            self.log_info(fl_ctx, f"statistics: {key}: {dataset.count('load_failed')} case(s), {dataset.failed} failed")

    def features(self) -> dict[str, list[Feature]]:
        return {key: [Feature(n, DataType.FLOAT) for n in d.names()] for key, d in self.datasets.items()}

    def count(self, dataset_name: str, feature_name: str) -> int:
        return self.datasets[dataset_name].count(feature_name)

    def case_count(self, dataset_name: str, feature_name: str) -> int:
        """Cases behind a feature (the minimum-count filter's count)."""
        return self.datasets[dataset_name].case_count(feature_name)

    def bin_cases(self, dataset_name: str, feature_name: str) -> list[int]:
        """Cases behind each bin of the feature's last histogram."""
        return list(self.datasets[dataset_name].bin_cases.get(feature_name, []))

    def sum(self, dataset_name: str, feature_name: str) -> float:
        return self.datasets[dataset_name].sum(feature_name)

    def mean(self, dataset_name: str, feature_name: str) -> float:
        return self.datasets[dataset_name].mean(feature_name)

    def stddev(self, dataset_name: str, feature_name: str) -> float:
        return self.datasets[dataset_name].stddev(feature_name)

    def variance_with_mean(
        self, dataset_name: str, feature_name: str, global_mean: float, global_count: float
    ) -> float:
        deviation = self.datasets[dataset_name].squared_deviation(feature_name, global_mean)
        return deviation / (global_count - 1) if global_count > 1 else 0.0

    def histogram(
        self, dataset_name: str, feature_name: str, num_of_bins: int, global_min_value: float, global_max_value: float
    ) -> Histogram:
        bins = self.datasets[dataset_name].histogram(feature_name, num_of_bins, global_min_value, global_max_value)
        return Histogram(HistogramType.STANDARD, [Bin(*b) for b in bins])

    def max_value(self, dataset_name: str, feature_name: str) -> float:
        return self.datasets[dataset_name].maximum(feature_name)

    def min_value(self, dataset_name: str, feature_name: str) -> float:
        return self.datasets[dataset_name].minimum(feature_name)

    def failure_count(self, dataset_name: str, feature_name: str) -> int:
        return 0  # a case that failed to load holds no feature but load_failed (1), so no value failed
