"""The typed model of a clara-fl FL job, built once from the MMAR, the template and the options.

``clara-fl job create`` writes its FLARE app configs from it (:meth:`ServerApp.to_config`,
:meth:`ClientApp.to_config`); the recipe hands FedJob one FLARE object per :class:`Component` of the same
model. Plain data only (no nvflare, no torch).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AGGREGATOR_ID",
    "LEARNER_ID",
    "MODEL_SELECTOR_ID",
    "PERSISTOR_ID",
    "SHAREABLE_GENERATOR_ID",
    "VALIDATOR_ID",
    "ClientApp",
    "Component",
    "Executor",
    "FLJob",
    "FilterDirection",
    "ServerApp",
    "TaskFilters",
]

LEARNER_ID = "clara_learner"
VALIDATOR_ID = "clara_validator"
PERSISTOR_ID = "persistor"
AGGREGATOR_ID = "aggregator"
SHAREABLE_GENERATOR_ID = "shareable_generator"
MODEL_SELECTOR_ID = "model_selector"
#: which way a filter chain filters: what a task carries to its executor, or what its result carries back
FilterDirection = Literal["task_data_filters", "task_result_filters"]


@dataclass
class Component:
    """One FLARE component, workflow, executor or filter: its class (dotted path) and constructor arguments."""

    path: str
    args: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> Component:
        """A FLARE config entry ``{"id": ..., "path": ..., "args": {...}}``."""
        return cls(path=str(entry["path"]), args=copy.deepcopy(dict(entry.get("args", {}))), id=entry.get("id"))

    def to_config(self) -> dict[str, Any]:
        """The FLARE config entry, as FedJob writes it."""
        entry: dict[str, Any] = {"id": self.id} if self.id is not None else {}
        return {**entry, "path": self.path, "args": copy.deepcopy(self.args)}

    @property
    def class_name(self) -> str:
        return self.path.rpartition(".")[2]


@dataclass
class TaskFilters:
    """A filter chain on some tasks."""

    tasks: list[str]
    filters: list[Component]

    def to_config(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "filters": [f.to_config() for f in self.filters]}


@dataclass
class Executor:
    """A site executor and the tasks it serves (its id names it in the job model; FLARE configs carry none)."""

    tasks: list[str]
    component: Component

    def to_config(self) -> dict[str, Any]:
        executor = {"path": self.component.path, "args": copy.deepcopy(self.component.args)}
        return {"tasks": list(self.tasks), "executor": executor}


def _chains(entries: Any) -> list[TaskFilters]:
    return [
        TaskFilters(list(g["tasks"]), [Component.from_config(f) for f in g.get("filters", [])]) for g in entries or []
    ]


@dataclass
class _App:
    components: list[Component] = field(default_factory=list)
    task_data_filters: list[TaskFilters] = field(default_factory=list)
    task_result_filters: list[TaskFilters] = field(default_factory=list)

    def component(self, component_id: str) -> Component | None:
        """The component with id ``component_id``, if there is one."""
        return next((c for c in self.components if c.id == component_id), None)

    def add_task_filters(self, direction: FilterDirection, tasks: list[str], filters: list[Component]) -> None:
        """Append ``filters`` to the chain of each task.

        FLARE allows one chain per task and direction, so a task that already has a chain gets the filters at its
        end (a task sharing a chain with others is split off with a copy of that chain).
        """
        chains: list[TaskFilters] = getattr(self, direction)
        for task in tasks:
            owner = next((c for c in chains if task in c.tasks), None)
            if owner is not None and owner.tasks == [task]:
                owner.filters = [*owner.filters, *filters]
                continue
            existing: list[Component] = []
            if owner is not None:
                owner.tasks = [t for t in owner.tasks if t != task]
                existing = list(owner.filters)
            chains.append(TaskFilters([task], [*existing, *filters]))

    def _base_config(self) -> dict[str, Any]:
        return {
            "components": [c.to_config() for c in self.components],
            "task_data_filters": [c.to_config() for c in self.task_data_filters if c.tasks],
            "task_result_filters": [c.to_config() for c in self.task_result_filters if c.tasks],
        }


@dataclass
class ServerApp(_App):
    """The server's app: its workflows (the training one first), components, filters and server settings."""

    workflows: list[Component] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # config_fed_server.json's "server" section

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ServerApp:
        """A config_fed_server.json's content (or a template's)."""
        return cls(
            components=[Component.from_config(c) for c in config.get("components", [])],
            task_data_filters=_chains(config.get("task_data_filters")),
            task_result_filters=_chains(config.get("task_result_filters")),
            workflows=[Component.from_config(w) for w in config.get("workflows", [])],
            settings=dict(config.get("server", {})),
        )

    def workflow(self, workflow_id: str) -> Component | None:
        """The workflow with id ``workflow_id``, if there is one."""
        return next((w for w in self.workflows if w.id == workflow_id), None)

    @property
    def aggregator(self) -> Component | None:
        return self.component(AGGREGATOR_ID)

    @property
    def persistor(self) -> Component | None:
        return self.component(PERSISTOR_ID)

    @property
    def shareable_generator(self) -> Component | None:
        return self.component(SHAREABLE_GENERATOR_ID)

    def to_config(self) -> dict[str, Any]:
        """config_fed_server.json's content."""
        config = {"format_version": 2, "workflows": [w.to_config() for w in self.workflows], **self._base_config()}
        return {**config, "server": dict(self.settings)} if self.settings else config


@dataclass
class ClientApp(_App):
    """The sites' app: executors (the Learner's and the cross-site validator), components and filters."""

    executors: list[Executor] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClientApp:
        """A config_fed_client.json's content (or a template's)."""
        return cls(
            components=[Component.from_config(c) for c in config.get("components", [])],
            task_data_filters=_chains(config.get("task_data_filters")),
            task_result_filters=_chains(config.get("task_result_filters")),
            executors=[
                Executor(list(e["tasks"]), Component.from_config(e["executor"])) for e in config.get("executors", [])
            ],
        )

    @property
    def learner(self) -> Component | None:
        return self.component(LEARNER_ID)

    @property
    def validator(self) -> Component | None:
        return next((e.component for e in self.executors if e.component.id == VALIDATOR_ID), None)

    def to_config(self) -> dict[str, Any]:
        """config_fed_client.json's content."""
        return {"format_version": 2, "executors": [e.to_config() for e in self.executors], **self._base_config()}


@dataclass
class FLJob:
    """A whole job: the server's and the sites' apps, and what the job was asked for.

    Args:
        server: the server's app.
        client: the app every site runs.
        min_clients: sites needed to start (meta.json).
        algorithm: the FL algorithm (:mod:`clara_fl.fl.algorithms`) and ``algorithm_args`` its checked arguments.
        he: homomorphic encryption with FLARE's HE components.
        template: the job template the apps came from (a name or a folder).
        environment: the job's config/environment.json (the MMAR's with the job's values on top); None keeps the
            MMAR's.
        privacy: what each privacy filter does to the sites' updates, a line each.
        aggregator: the robust aggregation rule in place of the weighted mean (``--aggregator``); None: the mean.
        sites: the sites the client app goes to, by name: the job then has two apps, the server's and the sites'
            (what only the server needs, such as the models of an evaluation job, stays off the sites); None: one
            app for the server and every site (FLARE's ``@ALL``).
    """

    server: ServerApp
    client: ClientApp
    min_clients: int
    algorithm: str
    algorithm_args: dict[str, Any]
    he: bool
    template: str
    environment: dict[str, Any] | None = None
    privacy: list[str] = field(default_factory=list)
    aggregator: str | None = None
    sites: list[str] | None = None
