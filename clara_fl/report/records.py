"""What a report shows, as typed records: read by :mod:`clara_fl.report.readers`, put together by
:mod:`clara_fl.report.collect`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

__all__ = [
    "CaseScores",
    "CrossSiteMatrix",
    "Curve",
    "PrivacyRelease",
    "RoundTiming",
    "RunDescription",
    "RunResults",
    "SiteRoundTiming",
    "lower_is_better",
]

LOWER_IS_BETTER = ("loss", "distance", "hausdorff", "error", "surface")


def lower_is_better(metric: str) -> bool:
    """Losses and distances improve downwards; Dice, accuracy and the like upwards."""
    return any(word in metric.lower() for word in LOWER_IS_BETTER)


@dataclass
class Curve:
    """One scalar tag of one site (or of a standalone run) against the step it was logged at."""

    tag: str
    steps: list[float]
    values: list[float]


@dataclass
class CrossSiteMatrix:
    """``cross_val_results.json``: rows data sites, columns model owners, each cell a dict of metrics or None.

    A cell is None when the owner's model was not validated at that site (a failed or missing task),
    or when FLARE recorded something other than metrics; ``reasons`` holds why, where the site said.
    """

    sites: list[str]
    owners: list[str]
    cells: dict[tuple[str, str], dict[str, float] | None]
    reasons: dict[tuple[str, str], str] = field(default_factory=dict)
    # what the sites' own models are when not their best local ones ("personalized" for Ditto)
    site_models: str | None = None

    def owner_name(self, owner: str) -> str:
        """A column's name: ``site-1 (personalized)`` for a site's personalized model, else the owner."""
        server_model = owner.startswith("SRV_") or owner.endswith(".pt")
        return f"{owner} ({self.site_models})" if self.site_models and not server_model else owner

    def value(self, site: str, owner: str, metric: str) -> float | None:
        metrics = self.cells.get((site, owner))
        return metrics.get(metric) if metrics else None

    def metrics(self) -> list[str]:
        names = {name for cell in self.cells.values() if cell for name in cell}
        return sorted(names)


@dataclass
class SiteRoundTiming:
    """When the server gave a site its train task and when the result came back (seconds from the job start)."""

    assigned: float | None = None
    returned: float | None = None


@dataclass
class RoundTiming:
    """One training round, from the server's log (seconds from the job start)."""

    round: int
    started: float
    finished: float | None = None
    aggregation_started: float | None = None
    aggregation_finished: float | None = None
    sites: dict[str, SiteRoundTiming] = field(default_factory=dict)

    def training_time(self, site: str) -> float | None:
        timing = self.sites.get(site)
        if timing is None or timing.assigned is None or timing.returned is None:
            return None
        return timing.returned - timing.assigned

    def waiting_time(self, site: str) -> float | None:
        """Idle time of a site in the round: before its task arrived and after its result, until aggregation."""
        timing = self.sites.get(site)
        end = self.aggregation_started if self.aggregation_started is not None else self.finished
        if timing is None or timing.assigned is None or timing.returned is None or end is None:
            return None
        return max(0.0, timing.assigned - self.started) + max(0.0, end - timing.returned)

    def aggregation_time(self) -> float | None:
        end = self.aggregation_finished if self.aggregation_finished is not None else self.finished
        if self.aggregation_started is None or end is None:
            return None
        return max(0.0, end - self.aggregation_started)

    def slowest_site(self) -> str | None:
        returned = {s: t.returned for s, t in self.sites.items() if t.returned is not None}
        return max(returned, key=returned.__getitem__) if returned else None


@dataclass
class CaseScores:
    """Per-case values of one metric from a MetricsSaver ``<metric>_raw.csv``."""

    metric: str
    site: str
    model: str
    cases: list[tuple[str, float]]
    source: Path

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.metric)


@dataclass(frozen=True)
class PrivacyRelease:
    """What a site's privacy filter let through in one round (its ``privacy_releases.jsonl`` record)."""

    site: str
    round: int | None
    filter: str
    released: int
    nonzero_before: int
    direction_kept: float
    almost_nothing: bool

    @property
    def share(self) -> float | None:
        return self.released / self.nonzero_before if self.nonzero_before else None


@dataclass(frozen=True)
class KeptModel:
    """A site's ``keep_better_model`` choice in one round (its ``site_model_kept`` event): the key metric of the
    global and of its personalized model on its own validation data, the better one, and whether it was kept."""

    site: str
    round: int | None
    metric: str
    global_score: float
    personal_score: float
    winner: str
    kept: bool
    kept_score: float


@dataclass
class RunDescription:
    """What ran: for the report's header."""

    kind: str  # "federated" or "standalone"
    path: Path
    mmar: str
    algorithm: str
    rounds: int | None
    sites: list[str]
    key_metric: str
    started: datetime | None
    epochs_per_round: int | None = None
    facts: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResults:
    """Everything a report shows, read from one run."""

    description: RunDescription
    cross_site: CrossSiteMatrix | None
    curves: dict[str, dict[str, Curve]]  # site (or "local" for a standalone run) -> tag -> curve
    global_model: dict[str, dict[int, dict[str, float]]]  # site -> round -> metrics of the global model
    timeline: list[RoundTiming]
    case_scores: list[CaseScores]
    privacy: list[PrivacyRelease] = field(default_factory=list)
    kept_models: list[KeptModel] = field(default_factory=list)  # the sites' keep_better_model choices
    # site -> round -> the epsilon the site had spent after that round's DP-SGD (its site_training_done events)
    dp_epsilon: dict[str, dict[int, float]] = field(default_factory=dict)

    def last_epsilon(self, site: str) -> float | None:
        """The epsilon ``site`` had spent after its last DP-SGD round; None where it ran no DP."""
        rounds = self.dp_epsilon.get(site)
        return rounds[max(rounds)] if rounds else None

    def cross_site_metric(self) -> str:
        """The key metric, or the results' first metric when the cross-site validation did not report it."""
        names = self.cross_site.metrics() if self.cross_site else []
        key = self.description.key_metric
        return key if key in names or not names else names[0]
