"""The comparison's own settings (the `[experiment]` table) and the one token budget every method shares.

The run's other tables (model, lora, data, client, eval, run) come from the ordinary
RunConfig, so a comparison uses the same base model, LoRA configuration, client optimizer
and seed as `fedlm simulate` would. The budget is counted in training sequences of
data.seq_len tokens: rounds x clients_per_round x local_steps x client.batch_size for the
federated methods, and the same number for centralized and local-only training.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlm.config import ConfigError, RunConfig, apply_overrides, coerce_value, config_from_dict, read_toml

SECTION = "experiment"
ADAPTIVE_OPTIMIZERS = ("adam", "yogi")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{SECTION}.{key}: {message}")


@dataclass(frozen=True)
class ExperimentSettings:
    """Defaults sized for SmolLM2-135M on 2 cores (measured, seed 0, see the README's table).

    FedAvg runs 2 clients x 4 local steps a round: at a fixed budget, R x local_steps is
    the number of sequential steps the global model takes (2 x 4: 32, against 16 for 4 x 2,
    which was behind after round 1: held-out perplexity 95 against 83). FedAdam's
    server lr 1e-2 with tau 1e-3 was the best of lr 1e-2 / tau 1e-4 (unstable), lr 5e-3 /
    tau 1e-3 and FedYogi lr 1e-2 / tau 1e-3 (the same as FedAdam). DP: with M = 64 clients
    the noise on the mean is z * clip / M per coordinate, so every client joins the one
    round (q = 1: no smaller cohort) and spends its share on 4 steps of batch 1, the most
    sequential steps a single round can hold; more rounds need a larger z for the same
    epsilon (z = 0.41 for 1 round, 0.58 for 2, 0.82 for 4 at delta = 1/64^1.1).
    """

    train_clients: int = 64  # M: the training clients, a seeded sample of the speakers that are not held out
    rounds: int = 8  # federated rounds (FedAvg, the adaptive optimizer, 8-bit)
    clients_per_round: int = 2  # fixed-size cohort of the federated methods
    local_steps: int = 4  # optimizer steps per client per round, at client.batch_size
    own_max_sequences: int = 64  # cap on the training clients' own test sequences (taken round-robin by client)
    adaptive_optimizer: str = "adam"  # the server optimizer of the adaptive row: "adam" (FedAdam) or "yogi"
    adaptive_lr: float = 1e-2
    adaptive_tau: float = 1e-3
    dp_rounds: int = 1  # DP-FedAvg: every setting below trades noise against steps at the same expected budget
    dp_sample_rate: float = 1.0  # Poisson q over the M training clients
    dp_local_steps: int = 4
    dp_batch_size: int = 1
    dp_clip_norm: float = 2.0
    dp_server_lr: float = 1.0
    dp_target_epsilon: float = 8.0
    dp_accountant: str = "pld"
    quantize_bits: int = 8  # the compressed row's stochastic quantization
    skip: tuple[str, ...] = ()  # rows to leave out (e.g. to explore one row); base and centralized always run

    def __post_init__(self) -> None:
        for key in ("train_clients", "rounds", "clients_per_round", "local_steps", "own_max_sequences",
                    "dp_rounds", "dp_local_steps", "dp_batch_size"):
            _require(getattr(self, key) >= 1, key, "must be >= 1")
        for key in ("adaptive_lr", "adaptive_tau", "dp_clip_norm", "dp_server_lr", "dp_target_epsilon"):
            _require(getattr(self, key) > 0, key, "must be > 0")
        _require(self.clients_per_round <= self.train_clients, "clients_per_round",
                 f"must be <= experiment.train_clients = {self.train_clients}")
        _require(self.adaptive_optimizer in ADAPTIVE_OPTIMIZERS, "adaptive_optimizer", f"must be one of {ADAPTIVE_OPTIMIZERS}")
        _require(0 < self.dp_sample_rate <= 1, "dp_sample_rate", "must be in (0, 1]")
        _require(self.dp_accountant in ("rdp", "pld"), "dp_accountant", "must be 'rdp' or 'pld'")
        _require(self.quantize_bits in (4, 8), "quantize_bits", "must be 4 or 8")
        _require(not {"base", "centralized"} & set(self.skip), "skip",
                 "base and centralized always run: every row's gain is measured against them")


@dataclass(frozen=True)
class Budget:
    """The training compute every trained method gets, and how each method spends it."""

    sequences: int  # training sequences of seq_len tokens, the same for every method
    seq_len: int
    batch_size: int
    centralized_steps: int
    local_steps: int  # local-only: steps per training client
    local_batch_size: int

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq_len

    def as_dict(self) -> dict[str, int]:
        return {"tokens": self.tokens, **dataclasses.asdict(self)}


def make_budget(settings: ExperimentSettings, config: RunConfig) -> Budget:
    """Derive every method's steps from the federated shape; refuse shapes that cannot share one budget."""
    batch = config.client.batch_size
    sequences = settings.rounds * settings.clients_per_round * settings.local_steps * batch
    per_client, left = divmod(sequences, settings.train_clients)
    _require(per_client >= 1 and left == 0, "train_clients",
             f"must divide the budget of {sequences} sequences (rounds x clients_per_round x local_steps x "
             f"client.batch_size) so that each local-only client gets an equal whole share")
    local_batch = min(batch, per_client)
    _require(per_client % local_batch == 0, "train_clients",
             f"gives each local-only client {per_client} sequences, not a whole number of batches of {local_batch}")
    dp_sequences = settings.dp_rounds * settings.dp_sample_rate * settings.train_clients * settings.dp_local_steps * settings.dp_batch_size
    _require(abs(dp_sequences - sequences) < 1e-6 * sequences, "dp_rounds",
             f"the DP row's expected budget dp_rounds x dp_sample_rate x train_clients x dp_local_steps x dp_batch_size "
             f"= {dp_sequences:g} sequences must equal the others' {sequences}")
    return Budget(sequences, config.data.seq_len, batch, sequences // batch, per_client // local_batch, local_batch)


def split_overrides(overrides: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(the run config's overrides, the [experiment] table's)."""
    rest = {k: v for k, v in overrides.items() if k != SECTION}
    return rest, dict(overrides.get(SECTION, {}))


def typed_settings(cls: type, section: str, values: dict[str, Any], base: Any = None) -> Any:
    """`base` (cls's defaults if None) with `values` applied, each type-checked like a RunConfig key and named
    `section.key` in errors (an experiment's own table: [experiment], [fleet], ...)."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}: unknown setting; known: {', '.join(sorted(hints))}")
    typed = {k: coerce_value(f"{section}.{k}", v, hints[k]) for k, v in values.items()}
    return dataclasses.replace(base or cls(), **typed)


def make_settings(values: dict[str, Any], base: ExperimentSettings | None = None) -> ExperimentSettings:
    """`base` (the defaults if None) with `values` applied, each type-checked like a RunConfig key."""
    return typed_settings(ExperimentSettings, SECTION, values, base)


# --quick: the tiny random model on a handful of clients, seconds end to end (tests use it).
QUICK_RUN = {
    "model": {"name": "tiny"},
    "data": {"seq_len": 32},
    "client": {"batch_size": 2, "lr": 5e-3},
    "eval": {"clients": 2, "max_sequences": 4},
}
# --quick under task.kind = "instruction": the tiny model's byte tokens need longer sequences for a cue and its reply.
# (the longest cue is about 230 bytes; only the roles of 300+ lines, so that tokenizing them all takes a second)
QUICK_INSTRUCTION = {"data": {"seq_len": 320, "min_lines": 300}, "eval": {"choice_questions": 8}}
QUICK_EXPERIMENT = {
    "train_clients": 4, "rounds": 2, "clients_per_round": 2, "local_steps": 1, "own_max_sequences": 4,
    "dp_rounds": 1, "dp_sample_rate": 1.0, "dp_local_steps": 1, "dp_batch_size": 2, "dp_accountant": "rdp",
}


def resolve(config: RunConfig, overrides: dict[str, dict[str, Any]], *, quick: bool) -> tuple[RunConfig, ExperimentSettings]:
    """The run config and experiment settings: defaults (or the --quick preset), then the overrides."""
    run_overrides, experiment_values = split_overrides(overrides)
    if quick:
        config = apply_overrides(config, QUICK_RUN)
        if run_overrides.get("task", {}).get("kind", config.task.kind) == "instruction":
            config = apply_overrides(config, QUICK_INSTRUCTION)
    settings = make_settings(QUICK_EXPERIMENT) if quick else ExperimentSettings()
    return apply_overrides(config, run_overrides), make_settings(experiment_values, settings)


def load_files(path: Path | None) -> tuple[RunConfig, dict[str, Any]]:
    """A TOML run config that may also hold an [experiment] table: (run config, that table's values)."""
    if path is None:
        return RunConfig(), {}
    data = read_toml(path)
    experiment = data.pop(SECTION, {})
    if not isinstance(experiment, dict):
        raise ConfigError(f"{SECTION}: must be a table")
    return config_from_dict(data), experiment
