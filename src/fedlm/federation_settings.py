"""The [federation] and [client] tables: who trains each round, and how each client trains locally."""

from __future__ import annotations

from dataclasses import dataclass

from fedlm.settings_checks import require


SAMPLINGS = ("fixed", "poisson", "cyclic")


@dataclass(frozen=True)
class FederationSettings:
    rounds: int = 4
    clients_per_round: int = 4  # cohort size for sampling = "fixed"
    # "fixed" (uniform without replacement), "poisson" (each client with rate q) or "cyclic" (the population split
    # once into `groups` seeded groups; group (round - 1) mod groups trains: what banded MF-DP-FTRL accounts for)
    sampling: str = "fixed"
    sample_rate: float = 0.0  # q for sampling = "poisson"
    groups: int = 1  # sampling = "cyclic": how many groups take turns (1 = every client every round)

    def __post_init__(self) -> None:
        require(self.rounds >= 1, "federation.rounds", "must be >= 1")
        require(self.clients_per_round >= 1, "federation.clients_per_round", "must be >= 1")
        require(self.sampling in SAMPLINGS, "federation.sampling", f"must be one of {SAMPLINGS}")
        if self.sampling == "poisson":
            require(0 < self.sample_rate <= 1, "federation.sample_rate", "must be in (0, 1] with poisson sampling")
        require(self.groups >= 1, "federation.groups", "must be >= 1")
        require(self.groups == 1 or self.sampling == "cyclic", "federation.groups", "applies to federation.sampling = 'cyclic' only")


@dataclass(frozen=True)
class ClientSettings:
    local_steps: int = 6  # optimizer steps per round (batches cycle through the client's data)
    batch_size: int = 4
    lr: float = 2e-3
    optimizer: str = "adamw"  # "adamw" or "sgd"
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    prox_mu: float = 0.0  # FedProx proximal term mu/2 * ||w - global||^2 on shared parameters; 0 = off
    lr_schedule: str = "constant"  # "constant", "linear" or "cosine" decay of lr over all rounds' steps (client.schedule)
    warmup_steps: int = 0  # linear warmup from 0 over this many global steps, (round - 1) * local_steps + step; 0 = none
    min_lr_ratio: float = 0.0  # linear / cosine: the rate decays to this share of lr
    max_grad_norm: float = 0.0  # clip the gradient's L2 norm over trainable parameters before each step; 0 = off
    grad_accumulation: int = 1  # micro-batches of batch_size averaged per optimizer step (effective batch batch_size * this)

    def __post_init__(self) -> None:
        require(self.prox_mu >= 0, "client.prox_mu", "must be >= 0")
        require(self.lr_schedule in ("constant", "linear", "cosine"), "client.lr_schedule",
                "must be 'constant', 'linear' or 'cosine'")
        require(self.warmup_steps >= 0, "client.warmup_steps", "must be >= 0")
        require(0 <= self.min_lr_ratio <= 1, "client.min_lr_ratio", "must be in [0, 1]")
        require(self.min_lr_ratio == 0 or self.lr_schedule != "constant", "client.min_lr_ratio",
                "applies to a decaying rate: set client.lr_schedule to 'linear' or 'cosine', or leave it at 0")
        require(self.max_grad_norm >= 0, "client.max_grad_norm", "must be >= 0 (0 is off)")
        require(self.grad_accumulation >= 1, "client.grad_accumulation", "must be >= 1")
        require(self.local_steps >= 1, "client.local_steps", "must be >= 1")
        require(self.batch_size >= 1, "client.batch_size", "must be >= 1")
        require(self.lr > 0, "client.lr", "must be > 0")
        require(self.optimizer in ("adamw", "sgd"), "client.optimizer", "must be 'adamw' or 'sgd'")
        require(self.weight_decay >= 0, "client.weight_decay", "must be >= 0")
        require(0 <= self.momentum < 1, "client.momentum", "must be in [0, 1)")
