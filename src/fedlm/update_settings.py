"""The [strategy], [privacy], [compression] and [secagg] tables: the settings of the path from a client's delta to
the new global (fedlm.updates.build turns them into the checked chain)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedlm.settings_checks import require

SERVER_OPTIMIZERS = ("sgd", "adam", "yogi", "adagrad")
AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "multi_krum")


@dataclass(frozen=True)
class StrategySettings:
    server_optimizer: str = "sgd"  # "sgd" (FedAvg / FedAvgM), "adam", "yogi", "adagrad" (Reddi et al. 2021)
    server_lr: float = 1.0  # server learning rate; sgd with 1.0 and no momentum is plain FedAvg
    server_momentum: float = 0.0  # sgd only (FedAvgM)
    server_beta1: float = 0.9  # adam / yogi / adagrad first-moment decay
    server_beta2: float = 0.99  # adam / yogi second-moment decay
    server_tau: float = 1e-3  # adam / yogi / adagrad adaptivity
    weighting: str = "samples"  # "samples" (by training sequences) or "uniform"; robust aggregators are unweighted
    max_client_weight: float = 0.0  # samples weighting: a client weighs min(its samples, this); 0 = no cap
    aggregator: str = "mean"  # "mean", or robust: "median", "trimmed_mean", "krum", "multi_krum"
    trim_fraction: float = 0.1  # trimmed_mean: share cut from each end, per coordinate
    num_byzantine: int = 0  # krum / multi_krum: f, the number of bad updates to tolerate
    krum_selected: int = 0  # multi_krum: updates averaged; 0 means cohort - f
    norm_bound: float = 0.0  # server-side: scale each update to L2 norm <= this before aggregating; 0 = off
    clip_norm: float = 0.0  # client-side: clip each update to L2 norm <= this; 0 = off

    def __post_init__(self) -> None:
        require(self.server_optimizer in SERVER_OPTIMIZERS, "strategy.server_optimizer", f"must be one of {SERVER_OPTIMIZERS}")
        require(self.server_lr > 0, "strategy.server_lr", "must be > 0")
        require(0 <= self.server_momentum < 1, "strategy.server_momentum", "must be in [0, 1)")
        require(0 <= self.server_beta1 < 1, "strategy.server_beta1", "must be in [0, 1)")
        require(0 < self.server_beta2 < 1, "strategy.server_beta2", "must be in (0, 1)")
        require(self.server_tau > 0, "strategy.server_tau", "must be > 0")
        require(self.server_momentum == 0 or self.server_optimizer == "sgd", "strategy.server_momentum", "applies to the sgd server optimizer only")
        require(self.weighting in ("samples", "uniform"), "strategy.weighting", "must be 'samples' or 'uniform'")
        require(self.aggregator in AGGREGATORS, "strategy.aggregator", f"must be one of {AGGREGATORS}")
        require(0 <= self.trim_fraction < 0.5, "strategy.trim_fraction", "must be in [0, 0.5)")
        require(self.num_byzantine >= 0, "strategy.num_byzantine", "must be >= 0")
        require(self.krum_selected >= 0, "strategy.krum_selected", "must be >= 0")
        require(self.norm_bound >= 0, "strategy.norm_bound", "must be >= 0 (0 = off)")
        require(0 <= self.max_client_weight < math.inf, "strategy.max_client_weight", "must be a finite number >= 0 (0 = no cap)")
        require(self.clip_norm >= 0, "strategy.clip_norm", "must be >= 0 (0 = off)")


MECHANISMS = ("gaussian", "banded_mf")


@dataclass(frozen=True)
class PrivacySettings:
    noise_multiplier: float = 0.0  # z: Gaussian noise std z * clip_norm on the sum; > 0 turns user-level DP on
    placement: str = "central"  # "central" (server adds the noise) or "distributed" (each client adds a share)
    delta: float = 0.0  # the DP delta; 0 means 1 / population^1.1
    accountant: str = "rdp"  # "rdp" or "pld" (dp-accounting)
    target_epsilon: float = 0.0  # stop before a round would take epsilon past this; 0 = no budget
    adaptive_clip: bool = False  # adapt strategy.clip_norm toward a quantile of update norms (Andrew et al. 2021)
    target_quantile: float = 0.5  # adaptive clipping: share of updates that should go unclipped
    clip_lr: float = 0.2  # adaptive clipping: geometric learning rate of the clip norm
    count_noise_multiplier: float = 0.0  # adaptive clipping: noise on the unclipped count; 0 = expected cohort / 20
    # "gaussian": fresh noise every round (DP-FedAvg); "banded_mf": banded matrix-factorization DP-FTRL, noise
    # correlated across rounds, the whole run one Gaussian mechanism paid at round 1 (needs sampling = "cyclic")
    mechanism: str = "gaussian"
    bands: int = 0  # banded_mf: b, the bands of the Toeplitz factor (<= federation.groups); 0 = federation.groups
    # scale each round's step by the released mean's estimated share of signal, max(0, 1 - sigma^2 P / |m|^2)
    # (positive-part James-Stein; post-processing of the noised mean, no privacy cost)
    noise_aware_lr: bool = False

    def __post_init__(self) -> None:
        require(self.noise_multiplier >= 0, "privacy.noise_multiplier", "must be >= 0 (0 = off)")
        require(self.mechanism in MECHANISMS, "privacy.mechanism", f"must be one of {MECHANISMS}")
        require(self.bands >= 0, "privacy.bands", "must be >= 0 (0 = federation.groups)")
        require(self.bands == 0 or self.mechanism == "banded_mf", "privacy.bands", "applies to privacy.mechanism = 'banded_mf' only")
        require(not self.noise_aware_lr or self.enabled, "privacy.noise_aware_lr", "needs privacy.noise_multiplier > 0")
        require(self.placement in ("central", "distributed"), "privacy.placement", "must be 'central' or 'distributed'")
        require(0 <= self.delta < 1, "privacy.delta", "must be in [0, 1) (0 = 1 / population^1.1)")
        require(self.accountant in ("rdp", "pld"), "privacy.accountant", "must be 'rdp' or 'pld'")
        require(self.target_epsilon >= 0, "privacy.target_epsilon", "must be >= 0 (0 = no budget)")
        require(0 < self.target_quantile < 1, "privacy.target_quantile", "must be in (0, 1)")
        require(self.clip_lr > 0, "privacy.clip_lr", "must be > 0")
        require(self.count_noise_multiplier >= 0, "privacy.count_noise_multiplier", "must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0


SCALES = ("auto", "chunk", "shared")  # compression.scale


@dataclass(frozen=True)
class CompressionSettings:
    quantize_bits: int = 0  # 0 = off; 8 or 4: unbiased stochastic rounding onto a grid of 2^bits - 1 levels
    chunk: int = 2048  # scale = "chunk": values per quantization scale
    rotate: bool = False  # randomized Hadamard rotation before quantizing (spreads outliers)
    # "chunk": each client scales each chunk by its own max |x|; "shared": one grid for the cohort, derived from
    # strategy.clip_norm and the bits, whose rounding never leaves the clip norm (updates.dp_quantize): composes
    # with DP and SecAgg; "auto": "shared" under DP or SecAgg, "chunk" otherwise
    scale: str = "auto"
    shared_range: float = 6.0  # scale = "shared": the largest code stands for this x clip_norm / sqrt(values)
    sparsify: str = "none"  # "none", "random" (a mask shared by the round's cohort), "top_k" (with error feedback)
    fraction: float = 1.0  # sparsify: share of coordinates sent

    def __post_init__(self) -> None:
        require(self.quantize_bits in (0, 4, 8), "compression.quantize_bits", "must be 0 (off), 4 or 8")
        require(self.chunk >= 1, "compression.chunk", "must be >= 1")
        require(not self.rotate or self.quantize_bits > 0, "compression.rotate", "only applies with compression.quantize_bits")
        require(self.scale in SCALES, "compression.scale", f"must be one of {SCALES}, got {self.scale!r}")
        require(self.scale == "auto" or self.quantize_bits > 0, "compression.scale", "only applies with compression.quantize_bits")
        require(0 < self.shared_range < math.inf, "compression.shared_range", "must be a finite number > 0")
        require(self.shared_range == 6.0 or self.scale != "chunk", "compression.shared_range",
                "only applies with compression.scale = 'shared' (or 'auto')")
        require(self.sparsify in ("none", "random", "top_k"), "compression.sparsify", "must be 'none', 'random' or 'top_k'")
        require(0 < self.fraction <= 1, "compression.fraction", "must be in (0, 1]")
        require(self.sparsify != "none" or self.fraction == 1, "compression.fraction", "needs compression.sparsify")
        require(self.scale != "shared" or self.sparsify == "none", "compression.scale",
                "'shared' cannot be combined with compression.sparsify: the shared grid bounds the whole update's norm")


@dataclass(frozen=True)
class SecAggSettings:
    enabled: bool = False  # secure aggregation (SecAgg+): the server learns only the cohort's sum
    neighbours: int = 0  # k, each client's neighbours in the masking graph; 0 = all others (original SecAgg)
    threshold: float = 0.5  # shares that recover a secret: more than this fraction of a client's neighbours

    def __post_init__(self) -> None:
        require(self.neighbours >= 0, "secagg.neighbours", "must be >= 0 (0 = all others)")
        require(0.5 <= self.threshold < 1, "secagg.threshold",
                 "must be in [0.5, 1): a majority of neighbours keeps the server from getting both secrets of a client")


def check_mechanism_combinations(config) -> None:
    """What banded MF-DP-FTRL and cyclic participation need (config: fedlm.config.RunConfig).

    The banded factor's sensitivity is exact only when a client trains at most once every `bands` rounds of a
    planned, fixed schedule: cyclic groups of one fixed population, in synchronous rounds, with the noise added
    by the server to the cohort's sum.
    """
    privacy, fed = config.privacy, config.federation
    if privacy.enabled and fed.sampling == "cyclic":
        require(privacy.mechanism == "banded_mf", "privacy.mechanism",
                "must be 'banded_mf' with federation.sampling = 'cyclic': independent noise per round is accounted "
                "for sampled cohorts ('poisson' or 'fixed')")
    if privacy.mechanism != "banded_mf":
        return
    require(privacy.enabled, "privacy.mechanism", "'banded_mf' needs privacy.noise_multiplier > 0")
    require(fed.sampling == "cyclic", "federation.sampling",
            "must be 'cyclic' with privacy.mechanism = 'banded_mf': its sensitivity holds for clients that train "
            "once every federation.groups rounds")
    bands = privacy.bands or fed.groups
    require(bands <= fed.groups, "privacy.bands",
            f"must be <= federation.groups = {fed.groups}: a {bands}-banded factor needs clients {bands} rounds apart")
    require(bands <= fed.rounds, "privacy.bands", f"must be <= federation.rounds = {fed.rounds}")
    require(privacy.placement == "central", "privacy.placement",
            "must be 'central' with privacy.mechanism = 'banded_mf': the server keeps the correlated noise's state")
    require(not privacy.adaptive_clip, "privacy.adaptive_clip",
            "cannot be combined with privacy.mechanism = 'banded_mf': the noised count is not in its accounting")
    require(config.policy.kind == "sync", "policy.kind",
            "must be 'sync' with privacy.mechanism = 'banded_mf': the factor is planned over fixed rounds")
    require(config.clusters.count == 1, "clusters.count",
            "must be 1 with privacy.mechanism = 'banded_mf': one noise stream serves one global")
    require(not config.secagg.enabled, "secagg.enabled",
            "cannot be combined with privacy.mechanism = 'banded_mf' yet: an abandoned round would leave the noise "
            "stream a round behind the schedule its sensitivity assumes")
    require(not privacy.noise_aware_lr, "privacy.noise_aware_lr",
            "cannot be combined with privacy.mechanism = 'banded_mf': a different scale each round would undo the "
            "cancellation of the correlated noise across rounds")
