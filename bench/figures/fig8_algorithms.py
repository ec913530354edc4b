"""Figure 8, FL algorithms on identical and differing sites: the same compute budget (rounds x local epochs =
epochs) for centralized ``clara-fl train`` on the union, each site alone, and FedAvg, FedProx, FedOpt, SCAFFOLD,
Ditto, FedBN (``clara-fl job create --algorithm``, ``clara-fl simulate``, 2 sites), on ``clara-fl synth`` data with
``--heterogeneity none`` and ``strong``: mean and worst-site Dice on each site's validation data (FL: the
cross-site table, global model; Ditto: each site's personalized model on its own data). Goals: FedAvg >= 0.97 of
centralized on identical sites; on differing sites the best algorithm beats FedAvg and beats every site alone on
that site's own validation data. An algorithm the CLI refuses (job create exits 2) is reported as skipped."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from bench.harness.data import prepare_data
from bench.harness.federated import JobRefused, run_clara_fl
from bench.harness.figure import Context, Figure
from bench.harness.records import Record, rounded
from bench.harness.settings import Settings
from bench.harness.training import evaluate_weights, train_clara

ALGORITHMS = ("fedavg", "fedprox", "fedopt", "scaffold", "ditto", "fedbn")
#: ``--algorithm-arg K=V`` per algorithm for figure 8 (none given: the CLI's defaults)
ALGORITHM_ARGS: dict[str, tuple[str, ...]] = {}
SITES = ("site-1", "site-2")
HETEROGENEITY = {"identical": "none", "differing": "strong"}  # figure 8's two datasets (clara-fl synth levels)


@dataclasses.dataclass
class Arm:
    """One way of training in figure 8 and its Dice on each site's validation data."""

    name: str
    per_site: dict[str, float] = dataclasses.field(default_factory=dict)
    skipped: str = ""  # why it did not run ("skipped: ...")
    note: str = ""
    wall_s: float | None = None
    # FedAvg's global model also scored by the neutral evaluator that scores centralized and site-alone training
    neutral_per_site: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.per_site.values()) if self.per_site else None

    @property
    def worst(self) -> float | None:
        return min(self.per_site.values()) if self.per_site else None

    def shown(self) -> str:
        if self.skipped:
            return self.skipped
        if self.mean is None or self.worst is None:
            return "-"
        return f"{self.mean:.3f}/{self.worst:.3f}"


def algorithm_options(name: str) -> list[str]:
    """The ``job create`` options that select ``name`` and its figure-8 arguments."""
    return ["--algorithm", name, *[a for kv in ALGORITHM_ARGS.get(name, ()) for a in ("--algorithm-arg", kv)]]


def cross_site_dice(workspace: Path, personalized: bool = False) -> dict[str, float]:
    """Each site's val_mean_dice from the run's cross-site table: the global model's, or (``personalized``) the
    site's own model on its own data (Ditto).

    Raises:
        RuntimeError: the run left no cross-site table.
    """
    from clara_fl.fl.jobs.results import find_cross_site_results, load_cross_site_results

    found = find_cross_site_results(workspace)
    if found is None:
        raise RuntimeError(f"no cross_val_results.json under {workspace}")
    results = load_cross_site_results(found)
    dice = {}
    for site, row in results.items():
        if personalized:
            owner = site
        else:
            # the final global model (not the best-by-validation one), as the centralized arm's final_model.pt
            final: list[str] = [o for o in ("SRV_FL_global_model.pt", "FL_global_model.pt") if o in row]
            owners = final or [o for o in row if (o.startswith("SRV_") or o.endswith(".pt")) and "best" not in o]
            owner = owners[0] if owners else ""
        value = row.get(owner, {}).get("val_mean_dice") if isinstance(row.get(owner), dict) else None
        if isinstance(value, (int, float)):
            dice[site] = float(value)
    return dice


def run_algorithm(settings: Settings, data: Path, out: Path, name: str) -> Arm:
    """One algorithm's job on 2 sites, scored from its cross-site table; skipped when job create refuses it."""
    rounds, local = settings.algorithm_rounds, settings.algorithm_local_epochs
    seed_set = [f"determinism.random_seed={settings.algorithm_seed}"]
    note = ""
    try:
        try:
            run, workspace = run_clara_fl(
                settings, data, out, rounds, 1000, local, seed_set, job_options=algorithm_options(name)
            )
        except JobRefused as refused:
            if name != "fedavg" or "--algorithm" not in str(refused):
                raise
            run, workspace = run_clara_fl(settings, data, out, rounds, 1000, local, seed_set)
            note = "job create has no --algorithm: its default job, FedAvg"
    except JobRefused as refused:
        return Arm(name, skipped=f"skipped: {refused}")
    except RuntimeError as failed:
        return Arm(name, skipped=f"failed: {str(failed).splitlines()[0]}")
    per_site = cross_site_dice(workspace, personalized=name == "ditto")
    neutral = {}
    if name == "fedavg":  # the two evaluators should agree: the goals compare their figures
        weights = workspace / "server" / "simulate_job" / "app_server" / "FL_global_model.pt"
        neutral = {
            site: evaluate_weights(settings, data, weights, out / "eval", data / f"dataset_{site}.json")
            for site in SITES
        }
    return Arm(name, per_site, note=note, wall_s=round(run.wall_s, 1), neutral_per_site=neutral)


def run_alone_and_central(settings: Settings, data: Path, out: Path) -> list[Arm]:
    """Centralized training on the union and each site alone, same epochs as the FL runs, scored on every site."""
    epochs = settings.algorithm_rounds * settings.algorithm_local_epochs
    seed_set = [f"determinism.random_seed={settings.algorithm_seed}"]
    trainings = {"centralized": data / "dataset.json"} | {f"{s} alone": data / f"dataset_{s}.json" for s in SITES}
    arms = []
    for name, datalist in trainings.items():
        folder = out / name.replace(" ", "-")
        run, weights = train_clara(settings, data, datalist, folder, epochs, seed_set)
        per_site = {
            site: evaluate_weights(settings, data, weights, folder / "eval", data / f"dataset_{site}.json")
            for site in SITES
        }
        arms.append(Arm(name, per_site, wall_s=round(run.wall_s, 1)))
    return arms


def run_quality_on_sites(ctx: Context) -> dict[str, list[Arm]]:
    """Every arm of figure 8 on the identical and on the differing sites' data."""
    settings = ctx.settings
    arms: dict[str, list[Arm]] = {}
    for label, level in HETEROGENEITY.items():
        data = prepare_data(settings, level)
        out = ctx.work / "algorithms" / label
        arms[label] = run_alone_and_central(settings, data, out)
        arms[label] += [run_algorithm(settings, data, out / name, name) for name in ALGORITHMS]
        ctx.log(
            f"  {label} sites (--heterogeneity {level}): " + ", ".join(f"{a.name} {a.shown()}" for a in arms[label])
        )
    return arms


def algorithm_records(arms: dict[str, list[Arm]], settings: Settings) -> list[Record]:
    """One row per arm (mean/worst-site Dice on identical | differing sites) and the three goals."""
    budget = f"{settings.algorithm_rounds} rounds x {settings.algorithm_local_epochs} epochs"
    by_name = {label: {a.name: a for a in group} for label, group in arms.items()}
    records = []
    for name in by_name["identical"]:
        pair = [by_name[label][name] for label in HETEROGENEITY]
        records.append(
            Record(
                figure=f"8 quality: {name}",
                measure=f"mean/worst-site Dice on each site's validation data, {budget} (or the same epochs)",
                baseline="identical | differing sites (mean/worst)",
                kind="dice",
                value=rounded(pair[1].mean),
                unit="",
                goal="(reported)",
                met=None,
                note=" | ".join(a.shown() for a in pair),
                detail={label: dataclasses.asdict(a) for label, a in zip(HETEROGENEITY, pair, strict=True)},
            )
        )
    same = by_name["identical"]
    fedavg, central = same["fedavg"].mean, same["centralized"].mean
    ratio = fedavg / central if fedavg is not None and central else None
    records.append(
        Record(
            figure="8 identical sites: FedAvg",
            measure="mean Dice over the sites, FedAvg / centralized, same epochs",
            baseline="clara-fl train on the union of the sites' data",
            kind="ratio",
            value=ratio,
            unit="x",
            goal=">= 0.97",
            met=ratio is not None and ratio >= 0.97,
        )
    )
    differ = by_name["differing"]
    federated = [differ[n] for n in ALGORITHMS if differ[n].mean is not None]
    best = max(federated, key=lambda a: a.mean or 0.0) if federated else None
    others = [a for a in federated if a.name != "fedavg"]
    base = differ["fedavg"].mean
    if best is None or base is None or not others:
        ran = ", ".join(a.name for a in federated) or "none"
        reason = f"skipped: only {ran} ran; the goal compares other algorithms with FedAvg"
        beats_fedavg = Record(
            "8 differing sites: best vs FedAvg",
            "best algorithm's mean Dice / FedAvg's",
            "FedAvg",
            "skipped",
            None,
            "",
            "> 1.00",
            None,
            note=reason,
        )
    else:
        beats_fedavg = Record(
            figure="8 differing sites: best vs FedAvg",
            measure="mean Dice over the sites, best algorithm / FedAvg",
            baseline=f"FedAvg (best: {best.name})",
            kind="ratio",
            value=(best.mean or 0.0) / base,
            unit="x",
            goal="> 1.00",
            met=best.name != "fedavg" and (best.mean or 0.0) > base,
        )
    records.append(beats_fedavg)
    if best is None:
        margins: dict[str, float] = {}
    else:
        margins = {
            s: best.per_site[s] - differ[f"{s} alone"].per_site[s]
            for s in SITES
            if s in best.per_site and s in differ[f"{s} alone"].per_site
        }
    records.append(
        Record(
            figure="8 differing sites: best vs each site alone",
            measure="per site: best algorithm's Dice minus that site's own model's, on the site's validation data",
            baseline=f"each site trained alone ({best.name if best else 'no algorithm ran'}; smallest margin)",
            kind="delta",
            value=min(margins.values()) if len(margins) == len(SITES) else None,
            unit="",
            goal="> 0 at every site",
            met=len(margins) == len(SITES) and min(margins.values()) > 0,
            samples=[round(m, 4) for m in margins.values()],
            note="" if best else "skipped: no algorithm ran",
        )
    )
    return records


def measure(ctx: Context) -> list[Record]:
    settings = ctx.settings
    ctx.log(
        f"figure 8: centralized, each site alone and {', '.join(ALGORITHMS)} on identical and differing sites, "
        f"{settings.algorithm_rounds} rounds x {settings.algorithm_local_epochs} epochs"
    )
    return algorithm_records(run_quality_on_sites(ctx), settings)


FIGURE = Figure("8", "algorithms, identical / differing sites", measure)
