"""The whole run as validated settings: TOML in, CLI overrides on top, one place for defaults.

Each table of the TOML file is one frozen dataclass below; an unknown table or key, a
value of the wrong type or out of range is refused with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib

import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

# [model] and [task] live in model_settings, [data] and [redaction] in data_settings, the update path's tables in
# update_settings; callers import every table (and ConfigError) from here.
from fedlm.data_settings import OVERLONG, PLACEHOLDER_STYLES, REDACTION_ENTITIES, DataSettings, RedactionSettings  # noqa: F401
from fedlm.model_settings import ENCODER_KINDS, TASK_KINDS, ModelSettings, TaskSettings  # noqa: F401
from fedlm.retrieval_settings import RetrievalSettings, encoder_defaults
from fedlm.federation_settings import SAMPLINGS, ClientSettings, FederationSettings  # noqa: F401
from fedlm.update_settings import (  # noqa: F401
    check_mechanism_combinations,
    AGGREGATORS, SCALES, SERVER_OPTIMIZERS, CompressionSettings, PrivacySettings, SecAggSettings, StrategySettings,
)
from fedlm.monitoring.settings import MonitoringSettings
from fedlm.server.cluster_settings import ClusterSettings, check_cluster_combinations
from fedlm.server.policy_settings import PolicySettings, check_policy_combinations
from fedlm.tracking.settings import TrackingSettings
from fedlm.settings_checks import ConfigError, collect_problems, report, report_error, require  # noqa: F401


LORA_AGGREGATIONS = ("fedit", "ffa", "svd")
EXECUTORS = ("serial", "processes", "ray")
EVAL_MODES = ("auto", "held_out", "per_site")  # how a run is evaluated; see fedlm.sim.setup.pick_eval_mode


@dataclass(frozen=True)
class RunSettings:
    seed: int = 0  # derives every random draw: sampling, splits, batches, LoRA init

    def __post_init__(self) -> None:
        require(self.seed >= 0, "run.seed", "must be >= 0")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    private: tuple[str, ...] = ()  # fnmatch patterns of adapter parameters that never leave a client
    aggregation: str = "fedit"  # "fedit" (mean of A and of B), "ffa" (A frozen, B only), "svd" (exact mean of B.A)
    client_ranks: tuple[int, ...] = ()  # svd only: ranks clients train, assigned by client id (each <= r)

    def __post_init__(self) -> None:
        require(self.aggregation in LORA_AGGREGATIONS, "lora.aggregation", f"must be one of {LORA_AGGREGATIONS}")
        require(all(1 <= k <= self.r for k in self.client_ranks), "lora.client_ranks", f"each rank must be in [1, lora.r = {self.r}]")
        require(not self.client_ranks or self.aggregation == "svd", "lora.client_ranks",
                 "heterogeneous ranks need lora.aggregation = 'svd' (fedit and ffa average factors of one rank)")
        require(self.r >= 1, "lora.r", "must be >= 1")
        require(self.alpha > 0, "lora.alpha", "must be > 0")
        require(0 <= self.dropout < 1, "lora.dropout", "must be in [0, 1)")
        require(len(self.target_modules) > 0, "lora.target_modules", "must name at least one module")


@dataclass(frozen=True)
class EvalSettings:
    mode: str = "auto"  # "held_out" (eval.clients sampled clients), "per_site" (every client on its own test split), "auto" picks by count
    clients: int = 16  # held_out: evaluation clients, a fixed seeded sample
    held_out_clients: bool = True  # held_out: evaluation clients never train (held-out speakers)
    max_sequences: int = 48  # cap on evaluation sequences (held_out: all clients together; per_site: each site)
    batch_size: int = 8
    multiple_choice: str = "auto"  # "auto" (the task kind's own: instruction asks which reply follows a cue), "off", or a JSONL path
    choice_questions: int = 64  # cap on multiple-choice questions (all evaluation clients together)
    choice_options: int = 4  # options per built-in question (the true one and seeded distractors)

    def __post_init__(self) -> None:
        require(self.multiple_choice in ("auto", "off") or self.multiple_choice.endswith(".jsonl"), "eval.multiple_choice",
                 f"must be 'auto', 'off' or the path of a .jsonl file, got {self.multiple_choice!r}")
        require(self.choice_questions >= 1, "eval.choice_questions", "must be >= 1")
        require(self.choice_options >= 2, "eval.choice_options", "must be >= 2")
        require(self.clients >= 1, "eval.clients", "must be >= 1")
        require(self.mode in EVAL_MODES, "eval.mode", f"must be one of {EVAL_MODES}, got {self.mode!r}")
        require(self.max_sequences >= 1, "eval.max_sequences", "must be >= 1")
        require(self.batch_size >= 1, "eval.batch_size", "must be >= 1")


@dataclass(frozen=True)
class SimulationSettings:
    executor: str = "serial"  # "serial" (one process, nothing copied), "processes" (a local pool) or "ray" (Ray actors)
    workers: int = 0  # processes / ray: workers, each holding its own model; 0 = one per CPU core
    address: str = ""  # ray: "" starts a local Ray; "auto" or "ray://host:10001" joins a running cluster
    client_timeout_seconds: float = 0.0  # processes / ray: a client still training after this fails and its worker is replaced; 0 = none

    def __post_init__(self) -> None:
        require(self.executor in EXECUTORS, "simulation.executor", f"must be one of {EXECUTORS}")
        require(self.workers >= 0, "simulation.workers", "must be >= 0 (0 = one per CPU core)")
        require(self.executor != "serial" or self.workers <= 1, "simulation.workers",
                 "needs simulation.executor = 'processes' or 'ray': the serial executor runs one client at a time")
        require(not self.address or self.executor == "ray", "simulation.address", "applies to simulation.executor = 'ray' only")
        require(0 <= self.client_timeout_seconds < math.inf, "simulation.client_timeout_seconds", "must be a finite number >= 0 (0 = none)")
        require(self.client_timeout_seconds == 0 or self.executor != "serial", "simulation.client_timeout_seconds",
                "needs simulation.executor = 'processes' or 'ray': the serial executor trains in this process and cannot stop a client")


@dataclass(frozen=True)
class RunConfig:
    run: RunSettings = field(default_factory=RunSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    task: TaskSettings = field(default_factory=TaskSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    federation: FederationSettings = field(default_factory=FederationSettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    strategy: StrategySettings = field(default_factory=StrategySettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    secagg: SecAggSettings = field(default_factory=SecAggSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    simulation: SimulationSettings = field(default_factory=SimulationSettings)
    redaction: RedactionSettings = field(default_factory=RedactionSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    clusters: ClusterSettings = field(default_factory=ClusterSettings)

    def __post_init__(self) -> None:
        """Checks that span tables; each message names the setting to change."""
        for table, value in encoder_defaults(self).items():  # frozen: set once, before any check reads them
            object.__setattr__(self, table, value)
        privacy, strategy = self.privacy, self.strategy
        if privacy.enabled or privacy.adaptive_clip:
            require(strategy.clip_norm > 0, "strategy.clip_norm",
                     "must be > 0 with differential privacy or adaptive clipping: noise is calibrated to it")
        if privacy.enabled:
            require(strategy.weighting == "uniform", "strategy.weighting",
                     "must be 'uniform' with differential privacy: a sample-weighted sum has no fixed sensitivity")
        require(not (privacy.enabled and privacy.adaptive_clip and privacy.placement == "distributed"), "privacy.adaptive_clip",
                "cannot be combined with privacy.placement = 'distributed': the server would see each client's clipped bit")
        require(privacy.placement != "distributed" or self.federation.sampling == "fixed", "privacy.placement",
                 "'distributed' needs federation.sampling = 'fixed': each share is calibrated to a known cohort size")
        require(not (privacy.enabled and privacy.accountant == "pld" and self.federation.sampling == "fixed"),
                 "privacy.accountant", "'pld' cannot account fixed-size sampling; use 'rdp' or federation.sampling = 'poisson'")
        require(privacy.target_epsilon == 0 or privacy.enabled, "privacy.target_epsilon",
                 "a privacy budget needs privacy.noise_multiplier > 0")
        require(self.task.kind not in ENCODER_KINDS or self.eval.mode != "per_site", "eval.mode",
                f"'per_site' is not supported for task.kind = {self.task.kind!r} yet: its evaluation scores held-out "
                "clients' own collections; use eval.mode = 'held_out'")
        require(self.task.kind not in ENCODER_KINDS or not (self.model.load_in_4bit or self.model.gradient_checkpointing),
                "model.load_in_4bit", f"and model.gradient_checkpointing are for the language models; task.kind = "
                f"{self.task.kind!r} loads a small sentence encoder in full")
        require(self.task.kind not in ("rerank", "classify") or self.lora.aggregation != "svd", "lora.aggregation",
                f"'svd' cannot be combined with task.kind = {self.task.kind!r}: its head is no LoRA pair to factor; "
                "use 'fedit' or 'ffa'")
        check_mechanism_combinations(self)  # privacy.mechanism and cyclic participation: what the accounting covers
        check_cluster_combinations(self)  # clusters.count > 1: what one ledger or one cohort's masks cannot cover
        check_policy_combinations(self)  # policy.kind = "fedbuff": what it cannot account or does not support
        if privacy.enabled:  # evaluation on a training client's own text would publish its figures without noise
            require(self.eval.mode != "per_site", "eval.mode", DP_PER_SITE)
            require(self.eval.held_out_clients, "eval.held_out_clients",
                    "must be true with differential privacy: the evaluation clients' figures are released without "
                    "noise, so they must be clients that never train")
        if self.secagg.enabled:
            require(strategy.clip_norm > 0, "strategy.clip_norm",
                     "must be > 0 with secure aggregation: the integer encoding needs a bound on every value")
            require(strategy.weighting == "uniform", "strategy.weighting",
                     "must be 'uniform' with secure aggregation: the server cannot weight updates it never sees")
            require(not privacy.adaptive_clip, "privacy.adaptive_clip",
                     "cannot be combined with secure aggregation yet: it counts each client's unclipped bit in the clear")
            require(self.simulation.executor == "serial", "simulation.executor",
                     "must be 'serial' with secure aggregation: the simulated protocol runs its clients in process")


DP_PER_SITE = ("'per_site' cannot be combined with differential privacy: every site trains, and its own evaluation "
               "figures would be released without noise; use eval.mode = 'held_out' (evaluation sites that never train; "
               "eval.clients sets how many)")


def coerce_value(key: str, value: Any, kind: Any) -> Any:
    """Check one TOML value against the field's annotated type (ints widen to floats); raise ConfigError naming `key`.

    Always raises, even inside a collector: a value of the wrong type has nothing to check further.
    """
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: must be a list, got {value!r}")
        item = typing.get_args(kind)[0]
        return tuple(coerce_value(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{key}: must be an integer, got {value!r}")
    if kind is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        return float(value)
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string, got {value!r}")
    return value


def build_section(name: str, cls: type, values: Any) -> Any:
    """The dataclass `cls` from the TOML table `values`, every key known and type-checked.

    Every problem of the table is reported together (one ConfigError, or the active
    collector's list): an unknown key is dropped and a value of the wrong type left at
    its default, so that the table's range checks still run on the other keys.
    """
    with collect_problems():
        if not isinstance(values, dict):
            report(f"{name}: must be a table")
            return cls()
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        typed = {}
        for key, value in values.items():
            if key not in known:
                report(f"{name}.{key}: unknown setting; known: {', '.join(sorted(known))}")
                continue
            try:
                typed[key] = coerce_value(f"{name}.{key}", value, hints[key])
            except ConfigError as err:
                report_error(err)
        return cls(**typed)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """The run config from TOML tables; one ConfigError lists every problem (each table's and the cross-table checks)."""
    hints = typing.get_type_hints(RunConfig)
    with collect_problems():
        sections = {}
        for name, values in data.items():  # in the file's order, so the problems are listed in it
            if name in hints:
                sections[name] = build_section(name, hints[name], values)
            else:
                report(f"{name}: unknown table; known: {', '.join(f.name for f in dataclasses.fields(RunConfig))}")
        return RunConfig(**sections)


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return {
        section.name: {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(getattr(config, section.name)).items()}
        for section in dataclasses.fields(config)
    }


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """The TOML file's tables; ConfigError saying which file is missing or malformed."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from None


def load_config(path: Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """The TOML file at `path` (defaults if None) with `overrides` ({section: {key: value}}) on top.

    The file and the overrides are checked together: one ConfigError lists every problem.
    """
    data = {} if path is None else read_toml(path)
    with collect_problems():
        for section, values in read_override_flags(overrides or {}).items():
            table = data.setdefault(section, {})
            if isinstance(table, dict):  # a section that is not a table is reported by config_from_dict
                table.update(values)
        return config_from_dict(data)


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value`, the value read as TOML (bare words are taken as strings)."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not section or not dot or not name:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, name, value


FLAG_SPELLINGS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def read_flag(key: str, value: Any) -> bool:
    """A boolean setting as the command line may spell it: true/false, yes/no, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    spelled = str(value).strip().lower() if isinstance(value, str | int) else None
    if spelled not in FLAG_SPELLINGS:
        raise ConfigError(f"{key}: must be true or false (or yes/no, 1/0), got {value!r}")
    return FLAG_SPELLINGS[spelled]


def read_override_flags(overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`overrides` with each boolean setting read by `read_flag` (a refused one is reported and left out).

    Only overrides get these spellings: a TOML file says true or false. Unknown tables and
    keys pass through untouched, for config_from_dict to report.
    """
    tables = typing.get_type_hints(RunConfig)
    read: dict[str, dict[str, Any]] = {}
    for section, values in overrides.items():
        if section not in tables or not isinstance(values, dict):
            read[section] = values
            continue
        kinds = typing.get_type_hints(tables[section])
        read[section] = {}
        for key, value in values.items():
            try:
                read[section][key] = read_flag(f"{section}.{key}", value) if kinds.get(key) is bool else value
            except ConfigError as err:
                report_error(err)
    return read


def apply_overrides(config: RunConfig, overrides: dict[str, dict[str, Any]]) -> RunConfig:
    """`config` with `overrides` ({section: {key: value}}) on top; one ConfigError lists every problem."""
    data = config_to_dict(config)
    with collect_problems():
        for section, values in read_override_flags(overrides).items():
            if section in data:
                data[section].update(values)
            else:
                report(f"{section}: unknown table; known: {', '.join(data)}")
        return config_from_dict(data)


def dump_config(config: RunConfig) -> str:
    return tomli_w.dumps(config_to_dict(config))




def settings_listing() -> list[str]:
    """One line per section, `section: key=default, ...`, for every setting (for --help)."""
    data = config_to_dict(RunConfig())
    return [
        f"{section}: " + ", ".join(f"{key}={json.dumps(value)}" for key, value in values.items())
        for section, values in data.items()
    ]
