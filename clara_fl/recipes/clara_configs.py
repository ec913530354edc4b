"""A Clara MMAR's own FL configs (config/config_fed_server.json, config/config_fed_client.json) read as recipe settings.

Two formats are read: Clara Train 4.0/4.1's (``servers[]``, ``aggregator``, ``model_persistor``, ``client_trainer``,
``client.outbound_filters``, ``cross_validate``...) and the NVFlare 2.0 format of the Clara 4.1 era
(``format_version: 2``, components/workflows/executors). What FLARE 2.9 carries becomes a
:class:`FedAvgSettings`; keys that no longer mean anything are listed as ignored; a setting that means something
but cannot be carried (a custom aggregator, a handler, server filters) is a one-line ConfigError naming the file
and the JSON path. Clara 4.0's HE components make an ``--he`` job with their arguments on FLARE 2.9's HE
components. docs/clara_fl_configs.md has the full table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clara_fl.config.errors import ConfigError
from clara_fl.config.jsonio import load_json
from clara_fl.fl.jobs.privacy import privacy_filter
from clara_fl.recipes import he as flare_he
from clara_fl.recipes.app_configs import FedAvgSettings

__all__ = ["FLConfigImport", "read_fl_configs"]

SERVER_FILE = "config/config_fed_server.json"
CLIENT_FILE = "config/config_fed_client.json"
AGGREGATOR = "InTimeAccumulateWeightedAggregator"
# Clara 4.0's name for the aggregator (the same arguments)
AGGREGATORS = (AGGREGATOR, "AccumulateWeightedAggregator")
PERSISTORS = ("PTFileModelPersistor",)
SHAREABLE_GENERATORS = ("FullModelShareableGenerator",)
# Clara 4.0's HE components (nvflare.experimental.homomorphic_encryption / medl) and what the --he job has instead
HE_AGGREGATOR = "HEInTimeAccumulateWeightedAggregator"
HE_PERSISTOR = "HEPTFileModelPersistor"
HE_SHAREABLE_GENERATOR = "HEModelShareableGenerator"
HE_ENCRYPTOR = "HEModelEncryptor"
HE_DECRYPTOR = "HEModelDecryptor"
HE_EVAL_DECRYPTOR = "HEEvalDecryptor"
HE_COMPONENTS = {
    HE_AGGREGATOR: flare_he.AGGREGATOR,
    HE_PERSISTOR: f"ClaraModelPersistor with {flare_he.SERIALIZE_FILTER}",
    HE_SHAREABLE_GENERATOR: flare_he.SHAREABLE_GENERATOR,
    HE_ENCRYPTOR: flare_he.ENCRYPTOR,
    HE_DECRYPTOR: flare_he.DECRYPTOR,
    HE_EVAL_DECRYPTOR: f"{flare_he.DECRYPTOR} on the validate task",
}
TENSEAL_CONTEXT = (
    "the TenSEAL contexts are provisioned under FLARE's names, server_context.tenseal and client_context.tenseal"
)
# Clara 4.0 defaults: the sites weigh the updates before encrypting, the server only adds
HE_SITES_WEIGH, HE_SERVER_WEIGHS = True, False
# medl outbound filters that put the steps and the best metric into what a site sends; ClaraLearner does that itself
METADATA_GENERATORS = ("IteratorNumberGenerator", "BestMetricGenerator")
MODEL_SELECTORS = ("IntimeModelSelectionHandler", "IntimeModelSelector")
# Clara 4.x server entries that FLARE 2.9 has no use for (deployment comes from provisioning)
IGNORED_SERVER_KEYS = {
    "name": "the job is named by clara-fl job create / the recipe",
    "max_num_clients": "FLARE 2.9 has no client ceiling per job",
    "service": "the server address comes from provisioning (fed_server.json in startup/)",
    "admin_host": "from provisioning",
    "admin_port": "from provisioning",
    "ssl_private_key": "from provisioning",
    "ssl_cert": "from provisioning",
    "ssl_root_cert": "from provisioning",
    "compression": "FLARE 2.9 picks the transport",
    "enable_byoc": "a job with custom/ is BYOC",
}
IGNORED_TRAINER_ARGS = {
    "model_reader_writer": "FLARE 2.9 exchanges numpy state_dicts (PTModelReaderWriter's job)",
    "train_config_filename": "the job trains config/config_train.json",
    "model_name": "the model comes from config_train.json",
}
EPOCH_ARGS = ("local_epochs", "aggregation_epochs", "epochs")
SCATTER_AND_GATHER_ARGS = (
    ("num_rounds", "num_rounds"),
    ("min_clients", "min_clients"),
    ("start_round", "start_round"),
    ("wait_time_after_min_received", "wait_after_min_clients"),
)
UNKNOWN_SERVER_KEY = "not a Clara FL server setting clara-fl knows; remove it or set it in a job template"


@dataclass
class FLConfigImport:
    """What an MMAR's Clara FL configs gave: the settings, and one line per key taken or ignored."""

    settings: FedAvgSettings = field(default_factory=FedAvgSettings)
    taken: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass
class _Given:
    """A value an HE component of the configs gave, and where (file, JSON path)."""

    value: Any
    file: str
    path: str


class _Reader:
    def __init__(self, mmar: Path) -> None:
        self.mmar = mmar
        self.result = FLConfigImport()
        self.file = ""
        # weigh_by_local_iter of the HE aggregator (server) and encryptor (sites), and the encryptor's weights
        self.server_weighs: _Given | None = None
        self.sites_weigh: _Given | None = None
        self.encryptor_weights: _Given | None = None
        self.server_weights: _Given | None = None

    def given(self, value: Any, path: str) -> _Given:
        return _Given(value, self.file, path)

    def take(self, path: str, value: Any, setting: str, file: str | None = None) -> Any:
        self.result.taken.append(f"{file or self.file}: {path} = {value!r} -> {setting}")
        return value

    def ignore(self, path: str, why: str, file: str | None = None) -> None:
        self.result.ignored.append(f"{file or self.file}: {path} ({why})")

    def fail(self, path: str, message: str, file: str | None = None) -> ConfigError:
        return ConfigError(message, file=str(self.mmar / (file or self.file)), path=path)

    def use_he(self, path: str, name: str) -> None:
        """A Clara HE component: the job runs with FLARE's HE components (``--he``)."""
        self.result.settings.he = True
        self.take(path, name, f"--he ({HE_COMPONENTS[name]})")

    def expect(self, value: Any, kind: type | tuple[type, ...], path: str, what: str) -> Any:
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self.fail(path, f"expected {what}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(path, f"expected {what}, got {type(value).__name__} {value!r}")
        return value

    def count(self, value: Any, path: str, minimum: int = 0) -> int:
        self.expect(value, int, path, "a whole number")
        if value < minimum:
            raise self.fail(path, f"expected a whole number >= {minimum}, got {value}")
        return int(value)


def _class_name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or str(entry.get("path", "")).rpartition(".")[2])


def read_fl_configs(mmar: str | Path) -> FLConfigImport | None:
    """The settings an MMAR's own FL configs ask for; None when it has neither file.

    Raises:
        ConfigError: a file is not valid JSON, a value has the wrong type, or a setting cannot be carried
            into a FLARE 2.9 job (one line: file, JSON path, what to do instead).
    """
    mmar = Path(mmar)
    reader = _Reader(mmar)
    found = False
    for name, read in ((SERVER_FILE, _read_server), (CLIENT_FILE, _read_client)):
        if (mmar / name).is_file():
            found = True
            reader.file = name
            reader.result.files.append(name)
            config = reader.expect(load_json(mmar / name), dict, "", "a JSON object")
            read(reader, config)
    if reader.result.settings.he:
        _settle_he_weighing(reader)
    return reader.result if found else None


# -- server ---------------------------------------------------------------------------------------------------------


def _read_server(r: _Reader, config: dict[str, Any]) -> None:
    s = r.result.settings
    if config.get("format_version") == 2:
        _read_server_v2(r, config)
        return
    servers = r.expect(config.get("servers", []), list, "servers", "a list of server entries")
    for i, server in enumerate(servers[:1]):
        r.expect(server, dict, f"servers[{i}]", "an object")
        for key, value in server.items():
            path = f"servers[{i}].{key}"
            if key == "num_rounds":
                s.num_rounds = r.take(path, r.count(value, path, 1), "num_rounds")
            elif key == "min_num_clients":
                s.min_clients = r.take(path, r.count(value, path, 1), "min_clients")
            elif key == "start_round":
                s.start_round = r.take(path, r.count(value, path), "ScatterAndGather start_round")
            elif key == "wait_after_min_clients":
                s.wait_after_min_clients = r.take(
                    path, r.count(value, path), "ScatterAndGather wait_time_after_min_received"
                )
            elif key == "heart_beat_timeout":
                s.heart_beat_timeout = r.take(path, r.count(value, path, 1), "server.heart_beat_timeout")
            elif key in IGNORED_SERVER_KEYS:
                r.ignore(path, IGNORED_SERVER_KEYS[key])
            else:
                raise r.fail(path, UNKNOWN_SERVER_KEY)
    for i in range(1, len(servers)):
        r.ignore(f"servers[{i}]", "one server per job in FLARE 2.9; the first entry is used")
    for key, value in config.items():
        if key in ("format_version", "servers"):
            continue
        if key == "aggregator":
            _read_aggregator(r, key, r.expect(value, dict, key, "an object"), (*AGGREGATORS, HE_AGGREGATOR))
        elif key == "model_persistor":
            _read_persistor(r, key, r.expect(value, dict, key, "an object"), (*PERSISTORS, HE_PERSISTOR))
        elif key == "shareable_generator" and isinstance(value, dict) and _class_name(value) == HE_SHAREABLE_GENERATOR:
            r.use_he(key, HE_SHAREABLE_GENERATOR)
            _read_tenseal_args(r, key, value)
        elif key == "shareable_generator":
            _expect_class(r, key, value, SHAREABLE_GENERATORS, "the job's FullModelShareableGenerator")
        elif key == "handlers":
            for j, handler in enumerate(r.expect(value, list, key, "a list")):
                _expect_class(r, f"{key}[{j}]", handler, MODEL_SELECTORS, "the job's IntimeModelSelector")
                _read_selector_key(r, f"{key}[{j}]", handler)
        elif key in ("outbound_filters", "inbound_filters"):
            if r.expect(value, list, key, "a list"):
                raise r.fail(
                    key,
                    "server filters are not carried; put them in a job template (task_data_filters/"
                    "task_result_filters of config_fed_server.conf)",
                )
            r.ignore(key, "empty")
        else:
            raise r.fail(key, UNKNOWN_SERVER_KEY)


def _read_aggregator(r: _Reader, path: str, entry: dict[str, Any], known: tuple[str, ...] = AGGREGATORS) -> None:
    name = _class_name(entry)
    if name not in known:
        raise r.fail(
            path,
            f"aggregator '{name}' cannot run on FLARE 2.9 as written for Clara; port it "
            "to an nvflare Aggregator and name it in a job template (clara-fl job create --template)",
        )
    if name == HE_AGGREGATOR:
        r.use_he(path, name)
    elif name != AGGREGATOR:
        r.take(path, name, AGGREGATOR)
    for key, value in r.expect(entry.get("args", {}), dict, f"{path}.args", "an object").items():
        arg = f"{path}.args.{key}"
        if key == "aggregation_weights" and name == HE_AGGREGATOR:
            r.server_weights = r.given(_weights(r, value, arg), arg)  # taken or not once the sites' are known
        elif key == "aggregation_weights":
            r.result.settings.aggregation_weights = r.take(
                arg, _weights(r, value, arg), "aggregator aggregation_weights"
            )
        elif key == "exclude_vars":
            r.result.settings.exclude_vars = r.take(
                arg, r.expect(value, str, arg, "a regular expression"), "aggregator exclude_vars"
            )
        elif key == "expected_data_kind":
            r.ignore(arg, "clara-fl's learner sends WEIGHT_DIFF and the job's aggregator expects it")
        elif key == "weigh_by_local_iter" and name == HE_AGGREGATOR:
            r.server_weighs = r.given(r.expect(value, bool, arg, "true or false"), arg)
            r.take(arg, value, f"{HE_AGGREGATOR} weigh_by_local_iter")
        elif key == "tenseal_context_file" and name == HE_AGGREGATOR:
            r.ignore(arg, TENSEAL_CONTEXT)
        else:
            raise r.fail(arg, f"not an {name} argument clara-fl carries")


def _weights(r: _Reader, value: Any, path: str) -> dict[str, float]:
    weights = r.expect(value, dict, path, "an object of site name: weight")
    for site, weight in weights.items():
        r.expect(weight, (int, float), f"{path}.{site}", "a number")
    return dict(weights)


def _read_tenseal_args(r: _Reader, path: str, entry: dict[str, Any]) -> None:
    """An HE component whose only argument is its TenSEAL context file."""
    for key in r.expect(entry.get("args", {}), dict, f"{path}.args", "an object"):
        arg = f"{path}.args.{key}"
        if key != "tenseal_context_file":
            raise r.fail(arg, f"not an {_class_name(entry)} argument clara-fl carries")
        r.ignore(arg, TENSEAL_CONTEXT)


def _read_persistor(r: _Reader, path: str, entry: dict[str, Any], known: tuple[str, ...] = PERSISTORS) -> None:
    name = _class_name(entry)
    if name not in known:
        raise r.fail(
            path,
            f"model persistor '{name}' is not carried; the job's ClaraModelPersistor "
            "builds the model from config_train.json",
        )
    if name == HE_PERSISTOR:
        r.use_he(path, name)
    for key, value in r.expect(entry.get("args", {}), dict, f"{path}.args", "an object").items():
        arg = f"{path}.args.{key}"
        if key == "model":
            r.ignore(arg, "the server builds config_train.json's train.model")
        elif key == "exclude_vars":
            # the job's ClaraModelPersistor is FLARE 2.9's PTFileModelPersistor, which takes the same argument
            r.result.settings.persistor_exclude_vars = r.take(
                arg, r.expect(value, str, arg, "a regular expression"), "persistor exclude_vars"
            )
        elif key == "tenseal_context_file" and name == HE_PERSISTOR:
            r.ignore(arg, TENSEAL_CONTEXT)
        elif key in ("source_ckpt_filename", "ckpt_preload_path"):
            raise r.fail(
                arg,
                "a starting checkpoint is not carried; set the MMAR's train config to load it "
                "(CheckpointLoader) instead",
            )
        else:
            r.ignore(arg, "no FLARE 2.9 equivalent")


def _expect_class(r: _Reader, path: str, entry: Any, known: tuple[str, ...], replacement: str) -> None:
    r.expect(entry, dict, path, "an object with name or path")
    if _class_name(entry) not in known:
        raise r.fail(
            path,
            f"'{_class_name(entry)}' is not carried into a FLARE 2.9 job; add its FLARE 2.9 port to a job template",
        )
    r.ignore(path, f"{_class_name(entry)}: {replacement} does this")


def _read_selector_key(r: _Reader, path: str, entry: dict[str, Any]) -> None:
    """A model selector's ``key_metric`` becomes the job's selector key (checked against the sites' metrics)."""
    args = r.expect(entry.get("args", {}), dict, f"{path}.args", "an object")
    if "key_metric" in args:
        arg = f"{path}.args.key_metric"
        s = r.result.settings
        s.model_selector_key = r.take(
            arg, r.expect(args["key_metric"], str, arg, "a metric name"), "model_selector key_metric"
        )
        s.model_selector_key_source = f"{r.mmar / r.file}: {arg}"


def _read_server_v2(r: _Reader, config: dict[str, Any]) -> None:
    s = r.result.settings
    variables = {k: v for k, v in config.items() if isinstance(v, (int, float, str)) and k != "format_version"}

    def value_of(raw: Any) -> Any:
        if isinstance(raw, str) and raw.startswith("{") and raw.endswith("}") and raw[1:-1] in variables:
            return variables[raw[1:-1]]
        return raw

    if "heart_beat_timeout" in config.get("server", {}):
        path = "server.heart_beat_timeout"
        s.heart_beat_timeout = r.take(path, r.count(config["server"]["heart_beat_timeout"], path, 1), path)
    has_cross_site = False
    for i, workflow in enumerate(r.expect(config.get("workflows", []), list, "workflows", "a list")):
        name, args = _class_name(workflow), workflow.get("args", {})
        path = f"workflows[{i}]"
        if name == "ScatterAndGather":
            for key, setting in SCATTER_AND_GATHER_ARGS:
                if key in args:
                    value = r.count(value_of(args[key]), f"{path}.args.{key}")
                    setattr(s, setting, r.take(f"{path}.args.{key}", value, setting))
        elif name in ("CrossSiteModelEval", "GlobalModelEval"):
            has_cross_site = True
            r.ignore(path, f"{name}: the job's cross-site evaluation covers it")
        else:
            raise r.fail(path, f"workflow '{name}' is not carried; name a job template with its FLARE 2.9 port")
    s.cross_site_eval = r.take("workflows", has_cross_site, "cross_site_eval")
    for i, component in enumerate(r.expect(config.get("components", []), list, "components", "a list")):
        name, path = _class_name(component), f"components[{i}]"
        if name == AGGREGATOR:
            _read_aggregator(r, path, component)
        elif name in PERSISTORS:
            _read_persistor(r, path, component)
        elif name in MODEL_SELECTORS:
            r.ignore(path, f"{name}: the job has its own")
            _read_selector_key(r, path, component)
        elif name in (
            *SHAREABLE_GENERATORS,
            "PTFileModelLocator",
            "PTFormatter",
            "ValidationJsonGenerator",
        ):
            r.ignore(path, f"{name}: the job has its own")
        else:
            raise r.fail(path, f"component '{name}' is not carried; name a job template with its FLARE 2.9 port")
    for key in ("task_data_filters", "task_result_filters"):
        if config.get(key):
            raise r.fail(key, "server filters are not carried; put them in a job template")


# -- client ---------------------------------------------------------------------------------------------------------


def _read_client(r: _Reader, config: dict[str, Any]) -> None:
    s = r.result.settings
    if config.get("format_version") == 2:
        _read_client_v2(r, config)
        return
    for key, value in config.items():
        if key in ("format_version",):
            continue
        if key == "servers":
            r.ignore(key, "the client's server comes from provisioning")
        elif key == "client":
            client = r.expect(value, dict, key, "an object")
            for sub, filters in client.items():
                path = f"client.{sub}"
                if sub == "outbound_filters":
                    s.result_filters += _client_filters(r, path, filters, HE_ENCRYPTOR)
                elif sub == "inbound_filters":
                    s.data_filters += _client_filters(r, path, filters, HE_DECRYPTOR)
                else:
                    r.ignore(path, "no FLARE 2.9 equivalent")
        elif key == "client_trainer":
            _read_trainer(r, key, r.expect(value, dict, key, "an object"))
        elif key == "handlers":
            if r.expect(value, list, key, "a list"):
                raise r.fail(key, "client handlers are not carried; add their FLARE 2.9 ports to a job template")
            r.ignore(key, "empty")
        elif key == "cross_validate":
            s.cross_site_eval = r.take(key, r.expect(value, bool, key, "true or false"), "cross_site_eval")
        elif key == "cross_site_validation":
            _read_cross_site(r, key, r.expect(value, dict, key, "an object"))
        else:
            raise r.fail(key, "not a Clara FL client setting clara-fl knows; remove it or set it in a job template")


def _read_trainer(r: _Reader, path: str, entry: dict[str, Any]) -> None:
    s = r.result.settings
    r.ignore(f"{path}.path", f"{_class_name(entry)}: the job trains with ClaraLearner from config_train.json")
    for key, value in r.expect(entry.get("args", {}), dict, f"{path}.args", "an object").items():
        arg = f"{path}.args.{key}"
        if key in EPOCH_ARGS:
            s.local_epochs = r.take(arg, r.count(value, arg, 0), "local_epochs")
        elif key == "steps_aggregation":
            s.steps_aggregation = r.take(arg, r.count(value, arg, 0), "steps_aggregation")
        elif key in IGNORED_TRAINER_ARGS:
            r.ignore(arg, IGNORED_TRAINER_ARGS[key])
        else:
            raise r.fail(arg, "not a trainer argument clara-fl carries; remove it")


def _read_cross_site(r: _Reader, path: str, section: dict[str, Any]) -> None:
    for key, value in section.items():
        sub = f"{path}.{key}"
        if key == "is_participating":
            if value is not True:
                raise r.fail(
                    sub,
                    "a site that sits out cross-site validation is not carried; every site of a FLARE "
                    "2.9 job validates (cross_site_eval=False switches it off for all)",
                )
            r.ignore(sub, "every site takes part")
        elif key == "model_validator":
            r.ignore(sub, f"{_class_name(value)}: the job validates with ClaraValidator (config_cross_validation.json)")
        elif key == "inbound_filters" and _only_he_eval_decryptors(r, sub, value):
            for i in range(len(value)):
                r.use_he(f"{sub}[{i}]", HE_EVAL_DECRYPTOR)
        elif key in ("inbound_filters", "outbound_filters"):
            if r.expect(value, list, sub, "a list"):
                raise r.fail(sub, "cross-site validation filters are not carried; add them to a job template")
            r.ignore(sub, "empty")
        else:
            r.ignore(sub, "no FLARE 2.9 equivalent")


def _only_he_eval_decryptors(r: _Reader, path: str, filters: Any) -> bool:
    """Clara 4.0's cross-site validation decrypts the server's models with HEEvalDecryptor (nothing else)."""
    entries = r.expect(filters, list, path, "a list")
    return bool(entries) and all(isinstance(e, dict) and _class_name(e) == HE_EVAL_DECRYPTOR for e in entries)


def _client_filters(r: _Reader, path: str, filters: Any, he_filter: str) -> list[dict[str, Any]]:
    """A Clara 4 client filter chain: privacy filters are carried, Clara's HE filter (``he_filter``: the encryptor
    of what a site sends, the decryptor of what it gets) makes an ``--he`` job, medl's metadata generators go."""
    carried: list[dict[str, Any]] = []
    encrypted_at: str | None = None
    for i, entry in enumerate(r.expect(filters, list, path, "a list of filters")):
        where = f"{path}[{i}]"
        name = _class_name(r.expect(entry, dict, where, "an object with name or path"))
        if name == he_filter:
            r.use_he(where, name)
            _read_he_filter(r, where, entry)
            encrypted_at = where
        elif name in METADATA_GENERATORS and he_filter == HE_ENCRYPTOR:
            r.ignore(where, f"{name}: ClaraLearner puts the steps and the validation metric into what it sends")
        elif encrypted_at is not None and he_filter == HE_ENCRYPTOR:
            raise r.fail(
                where,
                f"a filter after {HE_ENCRYPTOR} ({encrypted_at}) would get encrypted weights; the job encrypts "
                "last, so move it before the encryptor",
            )
        else:
            carried.append(_privacy_filter(r, where, entry))
    return carried


def _read_he_filter(r: _Reader, path: str, entry: dict[str, Any]) -> None:
    """HEModelEncryptor's arguments (FLARE 2.9's takes them too) or HEModelDecryptor's (its context file only)."""
    name = _class_name(entry)
    if name == HE_DECRYPTOR:
        _read_tenseal_args(r, path, entry)
        return
    s = r.result.settings
    for key, value in r.expect(entry.get("args", {}), dict, f"{path}.args", "an object").items():
        arg = f"{path}.args.{key}"
        if key == "encrypt_layers":
            layers = r.expect(value, (list, str), arg, "a list of variable names or a regular expression")
            if isinstance(layers, list):
                for j, layer in enumerate(layers):
                    r.expect(layer, str, f"{arg}[{j}]", "a variable name")
            s.he_encrypt_layers = r.take(arg, layers, f"{HE_ENCRYPTOR} encrypt_layers")
        elif key == "aggregation_weights":
            r.encryptor_weights = r.given(_weights(r, value, arg), arg)
        elif key == "weigh_by_local_iter":
            r.sites_weigh = r.given(r.expect(value, bool, arg, "true or false"), arg)
            r.take(arg, value, f"{HE_ENCRYPTOR} weigh_by_local_iter")
        elif key == "tenseal_context_file":
            r.ignore(arg, TENSEAL_CONTEXT)
        else:
            raise r.fail(arg, f"not an {name} argument clara-fl carries")


def _settle_he_weighing(r: _Reader) -> None:
    """The weighing of the updates, as Clara 4.0 did it: exactly once, at the sites before encrypting (then the
    encryptor's aggregation_weights count and the aggregator's are ignored) or by the server in encrypted space
    (then the aggregator's count). clara-fl's sites weigh either way, since its HE server only adds: the choice
    decides which aggregation_weights count, and the job gives those to both ends.

    Raises:
        ConfigError: both or neither weigh, or both would apply aggregation weights.
    """
    s = r.result.settings
    sites = r.sites_weigh.value if r.sites_weigh else HE_SITES_WEIGH
    server = r.server_weighs.value if r.server_weighs else HE_SERVER_WEIGHS
    given = r.sites_weigh or r.server_weighs
    if given is not None and sites == server:  # the defaults differ: a clash needs a value given
        both = "both the sites and the server weigh" if sites else "neither the sites nor the server weighs"
        raise r.fail(
            given.path,
            f"{both} the updates by their steps ({HE_ENCRYPTOR} and {HE_AGGREGATOR} weigh_by_local_iter); "
            "exactly one must",
            file=given.file,
        )
    counted, other = (r.server_weights, r.encryptor_weights) if server else (r.encryptor_weights, r.server_weights)
    if server and other is not None:
        raise r.fail(
            other.path,
            f"the server weighs ({HE_AGGREGATOR} weigh_by_local_iter is true), so weights here would be applied "
            "twice; give aggregation_weights to the aggregator only",
            file=other.file,
        )
    if counted is not None:
        where = HE_AGGREGATOR if server else f"{HE_ENCRYPTOR} and {HE_AGGREGATOR}"
        s.aggregation_weights = r.take(counted.path, counted.value, f"{where} aggregation_weights", file=counted.file)
    if other is not None:
        r.ignore(
            other.path,
            f"{HE_AGGREGATOR} ignores aggregation_weights when the sites weigh; {HE_ENCRYPTOR}'s count",
            file=other.file,
        )


def _filters(r: _Reader, path: str, filters: Any) -> list[dict[str, Any]]:
    entries = r.expect(filters, list, path, "a list of filters")
    return [_privacy_filter(r, f"{path}[{i}]", entry) for i, entry in enumerate(entries)]


def _privacy_filter(r: _Reader, where: str, entry: Any) -> dict[str, Any]:
    r.expect(entry, dict, where, "an object with name or path")
    args = r.expect(entry.get("args", {}), dict, f"{where}.args", "an object")
    carried = privacy_filter(_class_name(entry), args, str(r.mmar / r.file), where)
    r.take(where, _class_name(entry), f"client filter {carried['path']} on the train task")
    return carried


def _read_client_v2(r: _Reader, config: dict[str, Any]) -> None:
    s = r.result.settings
    for i, entry in enumerate(r.expect(config.get("executors", []), list, "executors", "a list")):
        tasks, executor = entry.get("tasks", []), entry.get("executor", {})
        path = f"executors[{i}].executor"
        if "train" in tasks:
            _read_trainer(r, path, executor)
        elif "validate" in tasks:
            r.ignore(path, f"{_class_name(executor)}: the job validates with ClaraValidator")
        else:
            raise r.fail(path, f"executor for tasks {tasks} is not carried; name a job template that has it")
    for key, target in (("task_result_filters", "result_filters"), ("task_data_filters", "data_filters")):
        for j, group in enumerate(r.expect(config.get(key, []), list, key, "a list")):
            getattr(s, target).extend(_filters(r, f"{key}[{j}].filters", group.get("filters", [])))
    if config.get("components"):
        raise r.fail("components", "client components are not carried; add their FLARE 2.9 ports to a job template")
