"""The [dp] table of `fedlm experiment dp` (fedlm.experiment.dp_compare): budgets, designs, adapters, client work.

Light on purpose: the command line reads it without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedlm.config import ConfigError, RunConfig, apply_overrides
from fedlm.experiment.settings import typed_settings

SECTION = "dp"
ADAPTERS = ("fedit", "ffa")
DESIGNS = ("full", "poisson", "banded_mf")


@dataclass(frozen=True)
class DPSettings:
    """Defaults sized for SmolLM2-135M on 2 cores: every non-held-out speaker trains once (4 steps of 1 x 128 tokens).

    One training pass over the speakers serves every design's first round: a client's round-1 update starts
    from the initial adapter whatever the design or the noise, so it is computed once and reused (rounds
    after the first start from noised globals and are trained afresh).
    """

    epsilons: tuple[float, ...] = (2.0, 4.0, 8.0)
    adapters: tuple[str, ...] = ADAPTERS  # lora.aggregation: "fedit" (A and B) and "ffa" (B only)
    designs: tuple[str, ...] = DESIGNS
    train_clients: int = 0  # 0 = every speaker that is not held out and has training text
    local_steps: int = 4
    batch_size: int = 1
    lr: float = 2e-3
    server_lr: float = 3.0  # every design's server step on its (noised) mean
    clip_quantile: float = 0.5  # the clip norm: this quantile of the public clients' update norms
    public_clients: int = 16  # public data for the clip norm: held-out speakers' training text (never trained on)
    poisson_rate: float = 0.2  # poisson: q
    poisson_rounds: int = 1
    mf_groups: int = 10  # banded_mf: cyclic groups (each client trains once every mf_groups rounds)
    mf_rounds: int = 2
    mf_bands: int = 2
    noise_aware: bool = True  # also run the full design with privacy.noise_aware_lr (James-Stein), fedit only
    centralized_steps: int = 64  # the reference: one optimizer on the union, `experiment compare`'s budget
    centralized_batch: int = 4

    def __post_init__(self) -> None:
        require(bool(self.epsilons) and all(e > 0 for e in self.epsilons), "epsilons", "must be numbers > 0")
        require(bool(self.adapters) and set(self.adapters) <= set(ADAPTERS), "adapters", f"must name some of {ADAPTERS}")
        require(bool(self.designs) and set(self.designs) <= set(DESIGNS), "designs", f"must name some of {DESIGNS}")
        for key in ("local_steps", "batch_size", "public_clients", "poisson_rounds", "mf_groups", "mf_rounds", "mf_bands",
                    "centralized_steps", "centralized_batch"):
            require(getattr(self, key) >= 1, key, "must be >= 1")
        require(self.train_clients >= 0, "train_clients", "must be >= 0 (0 = every speaker not held out)")
        require(self.lr > 0 and self.server_lr > 0, "lr", "and server_lr must be > 0")
        require(0 < self.clip_quantile < 1, "clip_quantile", "must be in (0, 1)")
        require(0 < self.poisson_rate < 1, "poisson_rate", "must be in (0, 1) (1 is the full design)")
        require(self.mf_bands <= min(self.mf_groups, self.mf_rounds), "mf_bands", "must be <= mf_groups and <= mf_rounds")


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{SECTION}.{key}: {message}")


def make_dp_settings(values: dict[str, Any], base: DPSettings | None = None) -> DPSettings:
    return typed_settings(DPSettings, SECTION, values, base)


# --quick: the tiny random model on 24 speakers, seconds end to end (tests use it).
QUICK_RUN = {"model": {"name": "tiny"}, "data": {"seq_len": 32}, "eval": {"clients": 2, "max_sequences": 4}}
QUICK_DP = {"train_clients": 24, "local_steps": 1, "batch_size": 2, "lr": 5e-3, "public_clients": 2, "epsilons": (8.0,),
            "poisson_rate": 0.5, "mf_groups": 2, "centralized_steps": 2, "centralized_batch": 2, "server_lr": 1.0}


def resolve_dp(config: RunConfig, overrides: dict[str, dict[str, Any]], *, quick: bool) -> tuple[RunConfig, DPSettings]:
    """The run config and the [dp] settings: defaults (or the --quick preset), then the overrides."""
    overrides = dict(overrides)
    values = overrides.pop(SECTION, {})
    overrides.pop("experiment", None)
    run_config = apply_overrides(apply_overrides(config, QUICK_RUN) if quick else config, overrides)
    return run_config, make_dp_settings(values, make_dp_settings(QUICK_DP) if quick else None)
