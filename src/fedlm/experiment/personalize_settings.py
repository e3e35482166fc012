"""The `[experiment]` table of `fedlm experiment personalize`: the globals' shape and how each client personalizes.

The run's other tables (model, lora, data, client) come from the ordinary RunConfig; the
experiment sets the federated shape, the evaluation (held-out speakers, loss only) and, for
the private-layers run, the sites. Reptile's global sees the FedAvg global's training tokens:
as many more local steps as fewer clients a round, so `reptile_steps` must divide
clients_per_round x local_steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedlm.config import RunConfig, apply_overrides, build_section
from fedlm.experiment.settings import SECTION, split_overrides
from fedlm.settings_checks import require

if TYPE_CHECKING:
    from fedlm.eval.personalization import PersonalSettings


@dataclass(frozen=True)
class PersonalizeSettings:
    """Defaults: benchmarks/personalization.py's, sized for SmolLM2-135M (see docs/experiments/personalize)."""

    rounds: int = 3  # FedAvg rounds of the global every method starts from
    clients_per_round: int = 4
    local_steps: int = 4
    eval_clients: int = 8  # held-out speakers scored, each on its own test text (eval.clients)
    eval_sequences: int = 4  # blocks of each client's own test text scored (and eval.max_sequences of the runs)
    steps: int = 4  # personal optimizer steps of finetune and Ditto
    personal_lr: float = 2e-3
    ditto_lambda: float = 100.0  # each personal step keeps 1 / (1 + personal_lr * lambda) of v - w_global
    reptile_server_lr: float = 0.5  # Reptile's outer step size (strategy.server_lr, uniform client weights)
    reptile_steps: int = 8  # local steps of the Reptile global's clients
    site_min_lines: int = 900  # private run: roles with this many lines are the sites (data.min_lines)
    private_layers: int = 1  # private run: the last decoder layers whose LoRA factors stay private; 0 skips the run

    def __post_init__(self) -> None:
        for key in ("rounds", "clients_per_round", "local_steps", "eval_clients", "eval_sequences", "reptile_steps",
                    "site_min_lines"):
            require(getattr(self, key) >= 1, f"{SECTION}.{key}", "must be >= 1")
        for key in ("steps", "private_layers"):
            require(getattr(self, key) >= 0, f"{SECTION}.{key}", "must be >= 0")
        for key in ("personal_lr", "reptile_server_lr"):
            require(getattr(self, key) > 0, f"{SECTION}.{key}", "must be > 0")
        require(self.ditto_lambda >= 0, f"{SECTION}.ditto_lambda", "must be >= 0")
        steps = self.clients_per_round * self.local_steps
        require(steps % self.reptile_steps == 0 and self.reptile_steps <= steps, f"{SECTION}.reptile_steps",
                f"must divide clients_per_round x local_steps = {steps}: the Reptile global trains as many tokens as "
                "FedAvg's, with as many more local steps as fewer clients a round")

    @property
    def reptile_clients_per_round(self) -> int:
        return self.clients_per_round * self.local_steps // self.reptile_steps

    def personal(self) -> PersonalSettings:
        from fedlm.eval.personalization import PersonalSettings  # torch loads only when the experiment runs

        return PersonalSettings(steps=self.steps, lr=self.personal_lr, ditto_lambda=self.ditto_lambda,
                                max_sequences=self.eval_sequences)


# --quick: the tiny random model, a few clients and steps: seconds end to end (tests use it).
QUICK_RUN = {"model": {"name": "tiny"}, "data": {"seq_len": 64}, "client": {"batch_size": 2, "lr": 5e-3}}
QUICK_EXPERIMENT = {"rounds": 2, "clients_per_round": 2, "local_steps": 2, "reptile_steps": 4, "eval_clients": 3,
                    "eval_sequences": 2, "steps": 2, "personal_lr": 5e-3}


def make_personalize_settings(values: dict[str, Any], *, quick: bool = False) -> PersonalizeSettings:
    """The defaults (or the --quick preset) with `values` on top; one ConfigError lists every problem."""
    return build_section(SECTION, PersonalizeSettings, (QUICK_EXPERIMENT if quick else {}) | values)


def resolve_personalize(config: RunConfig, overrides: dict[str, dict[str, Any]], *,
                        quick: bool) -> tuple[RunConfig, PersonalizeSettings]:
    """The run config and the experiment's settings: defaults (or the --quick preset), then the overrides."""
    run_overrides, values = split_overrides(overrides)
    if quick:
        config = apply_overrides(config, QUICK_RUN)
    return apply_overrides(config, run_overrides), make_personalize_settings(values, quick=quick)
