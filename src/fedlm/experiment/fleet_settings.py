"""The [fleet] table of `fedlm experiment fleet` (fedlm.experiment.fleet): the fleet, its slow share, the policies' sizes.

Light on purpose: the command line reads it without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedlm.config import ConfigError, RunConfig, apply_overrides
from fedlm.experiment.settings import typed_settings

SECTION = "fleet"
POLICIES = ("sync", "quorum", "fedbuff")
Log = Callable[[str], None]


@dataclass(frozen=True)
class FleetSettings:
    """Defaults sized for SmolLM2-135M on 2 cores: 48 client updates of 2 steps per policy."""

    train_clients: int = 32  # the fleet: a seeded sample of the speakers that are not held out
    clients_per_round: int = 8  # sync and quorum: the cohort; fedbuff: clients training at once
    rounds: int = 6  # synchronous rounds; every policy folds rounds x clients_per_round updates
    local_steps: int = 2
    slow_share: float = 0.2  # share of the fleet that is slow (policy.slow_share)
    slow_factor: float = 10.0  # how many times slower (policy.slow_factor)
    compute_sigma: float = 0.5  # spread of the log-normal step time (policy.compute_sigma)
    quorum: int = 0  # updates that close a quorum round; 0 = clients_per_round less its expected slow members
    buffer_size: int = 0  # fedbuff's K; 0 = clients_per_round // 2
    max_staleness: int = 0  # fedbuff; 0 = 2 x clients_per_round // buffer_size (two cohorts' worth of steps)
    target_perplexity: float = 0.0  # 0 = the highest final held-out perplexity among the policies
    policies: tuple[str, ...] = POLICIES

    def __post_init__(self) -> None:
        for key in ("train_clients", "clients_per_round", "rounds", "local_steps"):
            require(getattr(self, key) >= 1, key, "must be >= 1")
        require(self.clients_per_round <= self.train_clients, "clients_per_round",
                f"must be <= fleet.train_clients = {self.train_clients}")
        require(0 <= self.slow_share <= 1, "slow_share", "must be in [0, 1]")
        require(self.slow_factor >= 1, "slow_factor", "must be >= 1")
        require(0 <= self.compute_sigma <= 5, "compute_sigma", "must be in [0, 5]")
        require(0 <= self.quorum <= self.clients_per_round, "quorum", "must be in [0, clients_per_round]")
        require(0 <= self.buffer_size <= self.clients_per_round, "buffer_size", "must be in [0, clients_per_round]")
        require(self.max_staleness >= 0 and self.target_perplexity >= 0, "max_staleness", "must be >= 0")
        require(bool(self.policies) and set(self.policies) <= set(POLICIES), "policies",
                f"must name some of {POLICIES}")

    @property
    def updates(self) -> int:
        return self.rounds * self.clients_per_round

    @property
    def resolved_quorum(self) -> int:
        return self.quorum or max(1, self.clients_per_round - round(self.slow_share * self.clients_per_round))

    @property
    def resolved_buffer(self) -> int:
        return self.buffer_size or max(1, self.clients_per_round // 2)

    @property
    def resolved_staleness(self) -> int:
        return self.max_staleness or 2 * self.clients_per_round // self.resolved_buffer


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{SECTION}.{key}: {message}")


def make_fleet_settings(values: dict[str, Any], base: FleetSettings | None = None) -> FleetSettings:
    """`base` (the defaults if None) with `values` applied, each type-checked like a RunConfig key."""
    return typed_settings(FleetSettings, SECTION, values, base)


# --quick: the tiny random model, a fleet of 8, seconds end to end (tests use it).
QUICK_RUN = {"model": {"name": "tiny"}, "data": {"seq_len": 32}, "client": {"batch_size": 2, "lr": 5e-3},
             "eval": {"clients": 2, "max_sequences": 4}}
QUICK_FLEET = {"train_clients": 8, "clients_per_round": 4, "rounds": 3, "local_steps": 1, "slow_share": 0.25}


def resolve_fleet(config: RunConfig, overrides: dict[str, dict[str, Any]], *, quick: bool) -> tuple[RunConfig, FleetSettings]:
    """The run config and the [fleet] settings: defaults (or the --quick preset), then the overrides. A run config's
    [experiment] table is `fedlm experiment compare`'s and is not read here."""
    overrides = dict(overrides)
    values = overrides.pop(SECTION, {})
    overrides.pop("experiment", None)
    run_config = apply_overrides(apply_overrides(config, QUICK_RUN) if quick else config, overrides)
    return run_config, make_fleet_settings(values, make_fleet_settings(QUICK_FLEET) if quick else None)

