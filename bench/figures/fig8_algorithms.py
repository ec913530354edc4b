"""Figure 8, FL algorithms on identical and differing sites: the same compute budget (rounds x local epochs =
epochs) for centralized ``clara-fl train`` on the union, each site alone, and FedAvg, FedProx, FedOpt, SCAFFOLD,
Ditto, FedBN (``clara-fl job create --algorithm``, ``clara-fl simulate``), with the CLI's defaults (which give every
algorithm the same budget: Ditto's personalized model trains as many iterations as the round, from the round's
global model), on ``clara-fl synth`` data with ``--heterogeneity none`` and ``strong`` (``algorithm_datasets``), for
every seed of ``algorithm_seeds`` and every number of sites of ``algorithm_sites``: mean and worst-site Dice on each
site's validation data (FL: the cross-site table, global model; Ditto: each site's personalized model on its own
data; "<algorithm>, kept": the model each site kept with ``keep_better_model``, the better of the global and its
personalized model by its own validation, over the rounds; on differing sites "site-N alone, best": a second run of
the site alone validating every epoch, its best model by that validation, the fair match of a kept model). Goals:
FedAvg >= 0.97 of centralized on identical sites (also checked at figure 6's budget, ``quality_rounds`` x
``quality_local_epochs``); on differing sites the best algorithm beats FedAvg, and at every site clara-fl's best
model for that site (final or kept) beats the site alone (final or best) and beats FedAvg. Per-site bars (mean over
seeds, min-max whiskers) go to ``bench/results/figure-8/``. An algorithm the CLI refuses (job create exits 2) is
reported as skipped."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from bench.harness.data import prepare_data
from bench.harness.federated import JobRefused, run_clara_fl
from bench.harness.figure import Context, Figure
from bench.harness.records import Record, rounded
from bench.harness.settings import RESULTS, Settings
from bench.harness.training import best_model, evaluate_weights, train_clara

ALGORITHMS = ("fedavg", "fedprox", "fedopt", "scaffold", "ditto", "fedbn")
#: ``--algorithm-arg K=V`` per algorithm for figure 8 (none given: the CLI's defaults, the same budget for all)
ALGORITHM_ARGS: dict[str, tuple[str, ...]] = {}
SITES = ("site-1", "site-2")
HETEROGENEITY = {"identical": "none", "differing": "strong"}  # figure 8's two datasets (clara-fl synth levels)
KEPT = ", kept"  # an algorithm's arm of each site's keep_better_model choice: "fedavg, kept"
ALONE_BEST = ", best"  # a site alone's best-by-validation model: "site-1 alone, best"
PICTURES = RESULTS / "figure-8"


def site_names(count: int) -> tuple[str, ...]:
    return tuple(f"site-{k}" for k in range(1, count + 1))


def kept_arm(algorithm: str) -> str:
    """The name of the arm of the models each site kept (``keep_better_model``) in ``algorithm``'s run."""
    return algorithm + KEPT


def alone_arm(site: str, best: bool = False) -> str:
    """The name of ``site``'s arm trained alone: its final model, or (``best``) its best model by validation."""
    return f"{site} alone" + (ALONE_BEST if best else "")


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


@dataclasses.dataclass(frozen=True)
class Group:
    """One setting of figure 8: a seed and a number of sites."""

    seed: int
    sites: int

    @property
    def tag(self) -> str:
        """What the group's record names add (none for the first group of a default run's shape: 2 sites, seed 0)."""
        return "" if (self.seed, self.sites) == (0, 2) else f" [{self.sites} sites, seed {self.seed}]"


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


def kept_dice(workspace: Path) -> dict[str, float]:
    """Each site's kept model's score after the last round (its ``site_model_kept`` events: keep_better_model)."""
    from clara_fl.runtime import events as ev

    kept: dict[str, tuple[int, float]] = {}
    for path in workspace.rglob(ev.SITE_EVENTS_FILE):
        for event in ev.read_events(path):
            numbers = event.numbers()
            if event.kind == ev.SITE_MODEL_KEPT and event.site and "kept_score" in numbers:
                last = kept.get(event.site)
                if last is None or (event.round or 0) >= last[0]:
                    kept[event.site] = (event.round or 0, numbers["kept_score"])
    return {site: score for site, (_, score) in sorted(kept.items())}


def run_algorithm(
    settings: Settings,
    data: Path,
    out: Path,
    name: str,
    group: Group = Group(0, 2),
    budget: tuple[int, int] | None = None,
    keep_better: bool = True,
) -> list[Arm]:
    """One algorithm's job on the group's sites, scored from its cross-site table, and (``keep_better``) the model
    each site kept with ``keep_better_model`` (which changes nothing the sites train or send); skipped when job
    create refuses it."""
    rounds, local = budget or (settings.algorithm_rounds, settings.algorithm_local_epochs)
    seed_set = [f"determinism.random_seed={group.seed}"]
    options = {"keep_better_model": True} if keep_better else None
    try:
        run, workspace = run_clara_fl(
            settings,
            data,
            out,
            rounds,
            1000,
            local,
            seed_set,
            job_options=algorithm_options(name),
            sites=group.sites,
            site_options=options,
        )
    except JobRefused as refused:
        return [Arm(name, skipped=f"skipped: {refused}")]
    except RuntimeError as failed:
        return [Arm(name, skipped=f"failed: {str(failed).splitlines()[0]}")]
    per_site = cross_site_dice(workspace, personalized=name == "ditto")
    neutral = {}
    if name == "fedavg":  # the two evaluators should agree: the goals compare their figures
        weights = workspace / "server" / "simulate_job" / "app_server" / "FL_global_model.pt"
        neutral = {
            site: evaluate_weights(settings, data, weights, out / "eval", data / f"dataset_{site}.json")
            for site in site_names(group.sites)
        }
    arms = [Arm(name, per_site, wall_s=round(run.wall_s, 1), neutral_per_site=neutral)]
    if keep_better:
        note = "the better of global and personalized, by each site's validation, over the rounds"
        arms.append(Arm(kept_arm(name), kept_dice(workspace), note=note))
    return arms


def run_alone_and_central(
    settings: Settings,
    data: Path,
    out: Path,
    group: Group = Group(0, 2),
    epochs: int | None = None,
    best_alone: bool = False,
) -> list[Arm]:
    """Centralized training on the union and each site alone, same epochs as the FL runs, final models scored on
    every site; with ``best_alone`` each site also trains alone validating every epoch, and its best model by that
    validation (the MMAR's ``model.pt``, what a Clara user training alone keeps) is scored too: the fair match of
    the models the sites keep in the FL runs, which are chosen on the same validation data."""
    epochs = epochs or settings.algorithm_rounds * settings.algorithm_local_epochs
    seed_set = [f"determinism.random_seed={group.seed}"]
    sites = site_names(group.sites)
    # arm name -> (datalist, whether the arm is the run's best model by validation)
    trainings = {"centralized": (data / "dataset.json", False)}
    trainings |= {alone_arm(s): (data / f"dataset_{s}.json", False) for s in sites}
    if best_alone:
        trainings |= {alone_arm(s, best=True): (data / f"dataset_{s}.json", True) for s in sites}
    arms = []
    for name, (datalist, best) in trainings.items():
        folder = out / name.replace(" ", "-").replace(",", "")
        run, weights = train_clara(settings, data, datalist, folder, epochs, seed_set, 1 if best else 1000)
        scored = best_model(weights) if best else weights
        per_site = {
            site: evaluate_weights(settings, data, scored, folder / "eval", data / f"dataset_{site}.json")
            for site in sites
        }
        note = "a second run alone, validating every epoch: its best model by that validation" if best else ""
        arms.append(Arm(name, per_site, note=note, wall_s=round(run.wall_s, 1)))
    return arms


def groups(settings: Settings) -> list[Group]:
    return [Group(seed, sites) for sites in settings.algorithm_sites for seed in settings.algorithm_seeds]


def run_quality_on_sites(ctx: Context, group: Group = Group(0, 2)) -> dict[str, list[Arm]]:
    """Every arm of figure 8 on the identical and on the differing sites' data, for one group."""
    settings = ctx.settings
    arms: dict[str, list[Arm]] = {}
    for label in settings.algorithm_datasets:
        data = prepare_data(settings, HETEROGENEITY[label], sites=group.sites)
        out = ctx.work / "algorithms" / f"{group.sites}-sites-seed-{group.seed}" / label
        arms[label] = run_alone_and_central(settings, data, out, group, best_alone=label == "differing")
        for name in ALGORITHMS:
            arms[label] += run_algorithm(settings, data, out / name, name, group)
        ctx.log(
            f"  {label} sites (--heterogeneity {HETEROGENEITY[label]}){group.tag}: "
            + ", ".join(f"{a.name} {a.shown()}" for a in arms[label])
        )
    return arms


def _skipped(figure: str, measure: str, baseline: str, goal: str, note: str) -> Record:
    return Record(figure, measure, baseline, "skipped", None, "", goal, None, note=note)


def algorithm_records(
    arms: dict[str, list[Arm]], settings: Settings, sites: Sequence[str] = SITES, tag: str = ""
) -> list[Record]:
    """One row per arm (mean/worst-site Dice on identical | differing sites) and the goals of the data sets the
    group ran (``arms``' labels), for one group."""
    budget = f"{settings.algorithm_rounds} rounds x {settings.algorithm_local_epochs} epochs"
    by_name = {label: {a.name: a for a in group} for label, group in arms.items()}
    records = []
    for name in dict.fromkeys(n for group in by_name.values() for n in group):
        pair = [by_name.get(label, {}).get(name, Arm(name, skipped="-")) for label in HETEROGENEITY]
        records.append(
            Record(
                figure=f"8 quality: {name}{tag}",
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
    if "identical" in by_name:
        records.append(identical_record(by_name["identical"], tag))
    if "differing" in by_name:
        records += differing_records(by_name["differing"], sites, tag)
    return records


def identical_record(same: dict[str, Arm], tag: str = "") -> Record:
    """FedAvg against centralized training on identical sites, same epochs."""
    fedavg, central = same["fedavg"].mean, same["centralized"].mean
    ratio = fedavg / central if fedavg is not None and central else None
    return Record(
        figure=f"8 identical sites: FedAvg{tag}",
        measure="mean Dice over the sites, FedAvg / centralized, same epochs",
        baseline="clara-fl train on the union of the sites' data",
        kind="ratio",
        value=ratio,
        unit="x",
        goal=">= 0.97",
        met=ratio is not None and ratio >= 0.97,
    )


def differing_records(differ: dict[str, Arm], sites: Sequence[str], tag: str = "") -> list[Record]:
    """On differing sites: the best algorithm against FedAvg and against each site alone (final models), and each
    site's best model against the site alone and FedAvg (:func:`site_best_record`)."""
    records = []
    federated = [differ[n] for n in ALGORITHMS if n in differ and differ[n].mean is not None]
    best = max(federated, key=lambda a: a.mean or 0.0) if federated else None
    others = [a for a in federated if a.name != "fedavg"]
    base = differ["fedavg"].mean if "fedavg" in differ else None
    if best is None or base is None or not others:
        ran = ", ".join(a.name for a in federated) or "none"
        reason = f"skipped: only {ran} ran; the goal compares other algorithms with FedAvg"
        records.append(
            _skipped(
                f"8 differing sites: best vs FedAvg{tag}",
                "best algorithm's mean Dice / FedAvg's",
                "FedAvg",
                "> 1.00",
                reason,
            )
        )
    else:
        records.append(
            Record(
                figure=f"8 differing sites: best vs FedAvg{tag}",
                measure="mean Dice over the sites, best algorithm / FedAvg",
                baseline=f"FedAvg (best: {best.name})",
                kind="ratio",
                value=(best.mean or 0.0) / base,
                unit="x",
                goal="> 1.00",
                met=best.name != "fedavg" and (best.mean or 0.0) > base,
            )
        )
    if best is None:
        margins: dict[str, float] = {}
    else:
        margins = {
            s: best.per_site[s] - differ[alone_arm(s)].per_site[s]
            for s in sites
            if s in best.per_site and alone_arm(s) in differ and s in differ[alone_arm(s)].per_site
        }
    records.append(
        Record(
            figure=f"8 differing sites: best vs each site alone{tag}",
            measure="per site: best algorithm's Dice minus that site's own model's, on the site's validation data",
            baseline=f"each site trained alone ({best.name if best else 'no algorithm ran'}; smallest margin)",
            kind="delta",
            value=min(margins.values()) if len(margins) == len(sites) else None,
            unit="",
            goal="> 0 at every site",
            met=len(margins) == len(sites) and min(margins.values()) > 0,
            samples=[round(m, 4) for m in margins.values()],
            note="" if best else "skipped: no algorithm ran",
        )
    )
    records.append(site_best_record(differ, sites, tag))
    return records


def site_best_record(differ: dict[str, Arm], sites: Sequence[str], tag: str = "") -> Record:
    """At every site, clara-fl's best model for that site (the best FL arm there: a final model or a model the
    site kept) against the site alone (the better of its final model and, where it ran, its best model by
    validation) and against FedAvg: the smaller of the two margins, per site."""
    figure = f"8 differing sites: each site's best model vs alone and FedAvg{tag}"
    names = {*ALGORITHMS, *(kept_arm(n) for n in ALGORITHMS)}
    candidates = [a for n, a in differ.items() if n in names and a.per_site]
    fedavg, margins, chosen = differ.get("fedavg"), {}, {}
    for site in sites:
        alone = [
            a.per_site[site]
            for a in (differ.get(alone_arm(site, b)) for b in (False, True))
            if a and site in a.per_site
        ]
        scored = [a for a in candidates if site in a.per_site]
        if not scored or not alone or fedavg is None or site not in fedavg.per_site:
            continue
        top = max(scored, key=lambda a: a.per_site[site])
        chosen[site] = top.name
        margins[site] = min(
            top.per_site[site] - max(alone),
            top.per_site[site] - fedavg.per_site[site] if top.name != "fedavg" else 0.0,
        )
    if len(margins) < len(sites):
        return _skipped(
            figure,
            "per site: best model's Dice minus the larger of alone's and FedAvg's",
            "each site alone and FedAvg",
            "> 0 at every site",
            "skipped: an arm did not run at every site",
        )
    return Record(
        figure=figure,
        measure="per site: clara-fl's best model's Dice minus the larger of the site alone's and FedAvg's",
        baseline="each site alone (final or best by validation) and FedAvg ("
        + ", ".join(f"{s}: {n}" for s, n in chosen.items())
        + ")",
        kind="delta",
        value=min(margins.values()),
        unit="",
        goal="> 0 at every site",
        met=min(margins.values()) > 0,
        samples=[round(m, 4) for m in margins.values()],
    )


def fig6_budget_records(ctx: Context) -> list[Record]:
    """FedAvg against centralized training on identical sites at figure 6's budget, one pair per seed (2 sites)."""
    settings = ctx.settings
    budget = (settings.quality_rounds, settings.quality_local_epochs)
    data = prepare_data(settings, "none")
    ratios = []
    for seed in settings.algorithm_seeds:
        group = Group(seed, 2)
        out = ctx.work / "algorithms" / f"fig6-budget-seed-{seed}"
        [fedavg] = run_algorithm(settings, data, out / "fedavg", "fedavg", group, budget, keep_better=False)
        [central] = run_alone_and_central(settings, data, out, group, budget[0] * budget[1])[:1]
        if fedavg.mean is not None and central.mean:
            ratios.append(fedavg.mean / central.mean)
        ctx.log(f"  figure 6's budget, seed {seed}: fedavg {fedavg.shown()}, centralized {central.shown()}")
    value = statistics.median(ratios) if ratios else None
    return [
        Record(
            figure="8 identical sites: FedAvg at figure 6's budget",
            measure=f"mean Dice over the sites, FedAvg / centralized, {budget[0]} rounds x {budget[1]} epochs",
            baseline="clara-fl train on the union, same epochs (median over the seeds)",
            kind="ratio",
            value=value,
            unit="x",
            goal=">= 0.97",
            met=value is not None and value >= 0.97,
            samples=[round(r, 4) for r in ratios],
        )
    ]


def per_site_bars(results: dict[Group, dict[str, list[Arm]]], folder: Path = PICTURES) -> list[Path]:
    """One PNG per (number of sites, dataset): per-site Dice bars of every arm, mean over the seeds, min-max
    whiskers, in the style of ``clara-fl report``'s pictures (matplotlib's Agg backend, 100 dpi)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for count in sorted({g.sites for g in results}):
        chosen = [arms for g, arms in results.items() if g.sites == count]
        sites = site_names(count)
        for label in [k for k in HETEROGENEITY if any(k in arms for arms in chosen)]:
            names = list(dict.fromkeys(a.name for arms in chosen for a in arms.get(label, []) if a.per_site))
            figure, axes = plt.subplots(figsize=(max(7.0, 1.1 * len(names) * count / 2 + 3), 4.2), layout="constrained")
            width = 0.8 / max(1, len(names))
            for index, name in enumerate(names):
                values = [
                    [
                        a.per_site[s]
                        for arms in chosen
                        for a in arms.get(label, [])
                        if a.name == name and s in a.per_site
                    ]
                    for s in sites
                ]
                means = [statistics.fmean(v) if v else 0.0 for v in values]
                low = [m - min(v) if v else 0.0 for m, v in zip(means, values, strict=True)]
                high = [max(v) - m if v else 0.0 for m, v in zip(means, values, strict=True)]
                positions = [k + (index - (len(names) - 1) / 2) * width for k in range(count)]
                # tab20: a colour of its own for each of up to 20 arms (the default cycle repeats after 10)
                colour = plt.get_cmap("tab20")(index % 20)
                axes.bar(positions, means, width, yerr=[low, high], capsize=2, label=name, color=colour)
            axes.set_xticks(range(count), sites)
            axes.set_ylabel("val_mean_dice on the site's validation data")
            axes.set_ylim(0, 1)
            seeds = sum(label in arms for arms in chosen)
            axes.set_title(f"figure 8: {label} sites ({count}), mean over {seeds} seed(s)")
            axes.grid(axis="y", alpha=0.3)
            if names:
                axes.legend(fontsize="small", ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            path = folder / f"figure-8-{count}-sites-{label}.png"
            figure.savefig(path, format="png", dpi=100)
            plt.close(figure)
            written.append(path)
    return written


def measure(ctx: Context) -> list[Record]:
    settings = ctx.settings
    ctx.log(
        f"figure 8: centralized, each site alone and {', '.join(ALGORITHMS)} on "
        f"{' and '.join(settings.algorithm_datasets)} sites, "
        f"{settings.algorithm_rounds} rounds x {settings.algorithm_local_epochs} epochs, "
        f"sites {list(settings.algorithm_sites)}, seeds {list(settings.algorithm_seeds)}"
    )
    results = {group: run_quality_on_sites(ctx, group) for group in groups(settings)}
    records = []
    for group, arms in results.items():
        records += algorithm_records(arms, settings, site_names(group.sites), group.tag)
    if "identical" in settings.algorithm_datasets:
        records += fig6_budget_records(ctx)
    pictures = per_site_bars(results)
    ctx.log("  per-site bars: " + ", ".join(str(p) for p in pictures))
    write_summary(results)
    return records


def write_summary(results: dict[Group, dict[str, list[Arm]]], folder: Path = PICTURES) -> Path:
    """Every arm's numbers, per group and dataset, as ``arms.json`` beside the bars."""
    summary = {
        f"{g.sites} sites, seed {g.seed}": {k: [dataclasses.asdict(a) for a in v] for k, v in arms.items()}
        for g, arms in results.items()
    }
    path = folder / "arms.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def read_summaries(paths: Sequence[Path]) -> dict[Group, dict[str, list[Arm]]]:
    """The groups of one or more ``arms.json`` (runs of different groups, ``--algorithm-seeds/--algorithm-sites``,
    ``--algorithm-datasets``); a data set of a group in a later file replaces the same group's data set of an earlier
    one, and the group's other data set stays.

    Raises:
        ValueError: a group name that is not ``"N sites, seed S"``.
    """
    results: dict[Group, dict[str, list[Arm]]] = {}
    for path in paths:
        for name, datasets in json.loads(Path(path).read_text()).items():
            sites, _, seed = name.partition(" sites, seed ")
            if not (sites.isdigit() and seed.isdigit()):
                raise ValueError(f"{path}: group {name!r}: expected 'N sites, seed S'")
            results.setdefault(Group(int(seed), int(sites)), {}).update(
                {label: [Arm(**arm) for arm in arms] for label, arms in datasets.items()}
            )
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """``bench/figure8_bars.py --merge A/arms.json B/arms.json``: the per-site bars and ``arms.json`` of figure 8
    over the groups of several runs."""
    import argparse

    parser = argparse.ArgumentParser(description=(main.__doc__ or "").splitlines()[0])
    parser.add_argument("--merge", nargs="+", type=Path, required=True, help="arms.json files of figure 8 runs")
    parser.add_argument("--out", type=Path, default=PICTURES, help=f"folder for the bars (default {PICTURES})")
    args = parser.parse_args(argv)
    results = read_summaries(args.merge)
    for path in [*per_site_bars(results, args.out), write_summary(results, args.out)]:
        print(path)


FIGURE = Figure("8", "algorithms, identical / differing sites", measure)
