"""A site's cases read through the MMAR's own loader, summarized per case: runs in the site's confined process.

The loader is the validation section's pre-transforms (``config/config_validation.json``, else the train config's
``validate`` section), cut by one rule: **they are kept up to, and without, the first transform that is random
(``Randomizable``), changes intensities (``monai.transforms.intensity``) or crops or pads
(``monai.transforms.croppad``)**. What is kept is the loading and geometry part (``LoadImaged``, channel,
orientation, spacing, type conversion), so the statistics describe the data as the MMAR reads it, before it
normalizes, crops or augments it. The transforms and the datasets are built by the config engine under the
site's code policy and data folders, in the job's confined process, exactly as training builds them.

A case that fails to load is counted; its name and error go to the site's log only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.fl.site.local_training import SiteAppSettings
from clara_fl.fl.stats.features import DEFAULT_SAMPLE_VOXELS, CaseSummary, summarize_case

__all__ = ["StatsSettings", "cut_loading_transforms", "site_case_summaries"]

logger = logging.getLogger("clara_fl.fl.stats")

CUT_MODULES = ("monai.transforms.intensity", "monai.transforms.croppad")
_DATASET_PREFIX = "clara_fl_stats_"


@dataclass(frozen=True)
class StatsSettings(SiteAppSettings):
    """The site's part of the job and what to read (sent to the confined process)."""

    validation_config: str = "config/config_validation.json"
    train_config: str = "config/config_train.json"
    datalist_keys: list[str] = field(default_factory=list)
    sample_voxels: int = DEFAULT_SAMPLE_VOXELS


def cut_loading_transforms(transforms: list[Any]) -> list[Any]:
    """The loading part of a transform list: everything before the first random, intensity or crop/pad transform."""
    from monai.transforms import Randomizable

    kept = []
    for transform in transforms:
        module = type(transform).__module__
        if isinstance(transform, Randomizable) or module.startswith(CUT_MODULES):
            break
        kept.append(transform)
    return kept


def _loader_section(settings: StatsSettings) -> tuple[Any, Mapping[str, Any]]:
    """The loaded config that holds the loader and its section (the validation config, or ``validate``)."""
    from clara_fl.config.mmar import load_config

    s = settings
    if os.path.isfile(os.path.join(s.app_dir, s.validation_config)):
        loaded = load_config(s.app_dir, s.validation_config, s.environment, s.overrides, s.site_values)
        return loaded, loaded.config
    loaded = load_config(s.app_dir, s.train_config, s.environment, s.overrides, s.site_values)
    section = loaded.config.get("validate")
    if not isinstance(section, dict):
        raise ConfigError("no validation loader: the MMAR has no config_validation.json and no 'validate' section")
    return loaded, section


def _reduced_config(loaded: Any, section: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    """The config's variables, the loader's pre-transforms and one plain Dataset per datalist key."""
    from clara_fl.config.variables import config_globals

    where = "validate." if section is not loaded.config else ""
    for name in ("pre_transforms", "dataset"):
        if name not in section:
            raise ConfigError(f"missing '{where}{name}': statistics read the data through it", file=loaded.file)
    dataset = section["dataset"]
    if not isinstance(dataset, dict) or "data_list_file_path" not in dataset:
        raise ConfigError(
            "must read a datalist (data_list_file_path, data_file_base_dir, data_list_key)",
            file=loaded.file,
            path=f"{where}dataset",
        )
    reduced: dict[str, Any] = dict(config_globals(loaded.config))
    reduced["pre_transforms"] = section["pre_transforms"]
    for i, key in enumerate(keys):
        reduced[f"{_DATASET_PREFIX}{i}"] = {
            "name": "Dataset",
            "data_list_file_path": dataset["data_list_file_path"],
            "data_file_base_dir": dataset.get("data_file_base_dir", ""),
            "data_list_key": key,
            "args": {"transform": "@pre_transforms"},
        }
    return reduced


def _datalist_keys(settings: StatsSettings, variables: Any) -> list[str]:
    if settings.datalist_keys:
        return list(settings.datalist_keys)
    train = str(variables.get("TRAIN_DATALIST_KEY") or "training")
    val = str(variables.get("VAL_DATALIST_KEY") or "validation")
    return list(dict.fromkeys([train, val]))


def site_case_summaries(
    settings: StatsSettings, should_abort: Callable[[], bool]
) -> dict[str, tuple[list[CaseSummary], int]]:
    """Every case of every datalist key read through the loader: ``{key: (summaries, failed)}``.

    Raises:
        ConfigError: the loader cannot be built (or the site's policy refuses it).
        InterruptedError: ``should_abort`` said so.
    """
    from monai.transforms import Compose

    from clara_fl.workflows.build import build_components

    loaded, section = _loader_section(settings)
    keys = _datalist_keys(settings, loaded.variables)
    reduced = dataclasses.replace(loaded, config=_reduced_config(loaded, section, keys))
    resolver, _, _ = build_components(reduced, code_policy=settings.policy)
    built = resolver.get("pre_transforms", "")
    transforms = list(built.transforms) if isinstance(built, Compose) else list(built or [])
    kept = cut_loading_transforms(transforms)
    logger.info("statistics read the data through: %s", ", ".join(type(t).__name__ for t in kept) or "nothing")
    task = str(loaded.variables.get("PROCESSING_TASK") or "segmentation")
    classes = int(loaded.variables.get("OUTPUT_CHANNELS") or 2)
    out = {}
    for i, key in enumerate(keys):
        dataset = resolver.get(f"{_DATASET_PREFIX}{i}", "")
        dataset.transform = Compose(kept)
        out[key] = _read_cases(dataset, key, task, classes, settings.sample_voxels, should_abort)
    return out


def _read_cases(
    dataset: Any, key: str, task: str, classes: int, sample_voxels: int, should_abort: Callable[[], bool]
) -> tuple[list[CaseSummary], int]:
    summaries, failed = [], 0
    for index in range(len(dataset)):
        if should_abort():
            raise InterruptedError("statistics aborted")
        try:
            item = dataset[index]
            image = item["image"]
            affine = getattr(image, "affine", None)
            summary = summarize_case(
                _numpy(image), _numpy(item.get("label")), task, classes, affine, sample_voxels, seed=index
            )
        except Exception as e:  # the site's log names the case; the statistics only count it
            failed += 1
            logger.warning("statistics: %s[%d] (%s) failed to load: %s", key, index, _case_name(dataset, index), e)
            summaries.append(CaseSummary())
            continue
        summaries.append(summary)
    return summaries, failed


def _numpy(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def _case_name(dataset: Any, index: int) -> str:
    try:
        item = dataset.data[index]
        return str(item.get("image") if isinstance(item, dict) else item)
    except Exception:  # the name is only for the site's log
        return "?"


def data_stats_task(params: Mapping[str, Any], should_abort: Callable[[], bool]) -> dict[str, Any]:
    """The confined process's ``data_stats`` task: ``{key: {"failed": n, "cases": [record, ...]}}``.

    Raises:
        SiteTaskFailed: the loader does not build, or reading was aborted.
    """
    from clara_fl.fl.site.failure_report import SiteFailure
    from clara_fl.fl.site.local_training import SiteTaskFailed

    settings = StatsSettings(**params["settings"])
    try:
        found = site_case_summaries(settings, should_abort)
    except InterruptedError as e:
        raise SiteTaskFailed(SiteFailure.refusal("data_stats", "aborted", str(e))) from e
    except Exception as e:  # bad config or data at this site: one line for the site, its kind for the server
        raise SiteTaskFailed(SiteFailure.from_exception("data_stats", e, settings.app_dir)) from e
    return {key: {"failed": failed, "cases": [c.as_record() for c in cases]} for key, (cases, failed) in found.items()}
