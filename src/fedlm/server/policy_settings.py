"""The [policy] table: when the server aggregates (the whole cohort, a quorum by a deadline, or a buffer of updates).

"sync" is the synchronous round of fedlm.server.rounds: every round waits for its cohort.
"quorum" is the same round closed early: at the `quorum`-th update or at `deadline_seconds`
(simulated seconds), whichever comes first, with the updates that arrived; a straggler's update
is dropped (Bonawitz et al. 2019, "Towards Federated Learning at Scale: System Design",
arXiv:1902.01046, §2: a round succeeds once enough devices report before its timeout). If no
update has arrived by the deadline the round waits for the first one. The service's round is
this policy in wall-clock time (federation.clients_per_round closes it early,
scheduling.deadline_seconds late).
"fedbuff" is buffered asynchronous aggregation (Nguyen et al. 2022, "Federated Learning with
Buffered Asynchronous Aggregation", arXiv:2106.06639; fedlm.server.buffered): `concurrency`
clients train at once, each from the global version it was handed, and the server takes a step
every `buffer_size` updates, weighting each by its staleness. The simulation times it on a
virtual clock (fedlm.sim.virtual_clock), whose settings are here too. The clock also times "quorum"
rounds, and "sync" rounds when any of its settings is set, so the three compare in simulated
seconds (`sim_seconds` in each metrics line).

What quorum does not support, refused the same way: secure aggregation (the masks of the dropped
stragglers would have to be recovered every round; the SecAgg round has its own dropout stages).

What fedbuff does not support, refused by `check_policy_combinations` with a message naming both
settings:
- differential privacy: fedlm accounts user-level DP per synchronous round, as a sampled Gaussian
  mechanism (Poisson or fixed-size sampling of the cohort by the server, noise on the cohort's sum).
  Under FedBuff who lands in a buffer is decided by client speed and arrival order, not by the
  server's sampling, a client can reach consecutive buffers, and each buffer mixes updates computed
  from different versions; no accountant in fedlm (nor dp-accounting's events) covers that, and the
  amplification-by-sampling argument does not hold as it stands. Asynchronous DP accounting is not
  implemented, so the combination is refused rather than reported with an epsilon that is not one.
- secure aggregation: its masks cancel only in the sum of one cohort that agreed keys in one round,
  while the buffer folds updates one at a time, each weighted by its own staleness;
- robust aggregators and lora.aggregation = "svd": they need a whole round's updates as rows;
- the processes and ray executors: the asynchronous engine trains in this process;
- federation.sampling = "poisson": clients are dispatched one at a time as a training slot frees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from fedlm.settings_checks import report, require

if TYPE_CHECKING:  # config imports this module; the check below only reads a RunConfig
    from fedlm.config import RunConfig

POLICIES = ("sync", "quorum", "fedbuff")
FEDBUFF_KEYS = ("buffer_size", "concurrency", "max_staleness", "staleness_weight", "eval_every")
QUORUM_KEYS = ("quorum", "deadline_seconds")
CLOCK_KEYS = ("compute_mu", "compute_sigma", "slow_share", "slow_factor", "network_seconds")
STALENESS_WEIGHTS = ("sqrt", "constant")  # w(s) = 1/sqrt(1+s) (FedBuff's choice), or 1
MAX_LOG_SECONDS = 20.0  # compute_mu beyond +-20 (e^20 s, about 15 years a step) is a typo, not a fleet


@dataclass(frozen=True)
class PolicySettings:
    # "sync" (every round waits for its cohort), "quorum" (a round closes at `quorum` updates or at `deadline_seconds`)
    # or "fedbuff" (aggregate every buffer_size updates)
    kind: str = "sync"
    quorum: int = 0  # quorum: updates that close a round early; 0 = the whole cohort
    deadline_seconds: float = 0.0  # quorum: simulated seconds after which a round closes with what arrived; 0 = none
    # fedbuff: the server steps every buffer_size updates (K); federation.rounds counts these steps (global versions)
    buffer_size: int = 4
    # fedbuff: clients training at once; the simulation holds each one's update until its virtual finish
    # time, so it keeps concurrency x P floats (P: the update's size) besides the model
    concurrency: int = 8
    # fedbuff: staleness s = the server's version - the version an update started from; past this it is refused
    max_staleness: int = 8
    staleness_weight: str = "sqrt"  # fedbuff: "sqrt" weighs an update by 1/sqrt(1+s), "constant" by 1
    eval_every: int = 1  # fedbuff: evaluate the global every this many aggregations (and after the last)
    # the virtual clock (fedbuff, quorum; sync when any is set): a task takes local_steps x exp(N(compute_mu, compute_sigma))
    # seconds of compute, times slow_factor for a slow client, plus network_seconds
    compute_mu: float = 0.0  # log of a client's seconds per local step: the median step takes e^mu s (1 s at 0)
    compute_sigma: float = 0.5  # spread of the log-normal: its heavy tail (0 = every step the median)
    slow_share: float = 0.0  # share of the training clients that are slow, a seeded choice fixed for the run
    slow_factor: float = 10.0  # a slow client's compute takes this many times as long
    network_seconds: float = 0.0  # per task: download the global and upload the update

    def __post_init__(self) -> None:
        require(self.kind in POLICIES, "policy.kind", f"must be one of {POLICIES}")
        require(self.buffer_size >= 1, "policy.buffer_size", "must be >= 1")
        require(self.concurrency >= 1, "policy.concurrency", "must be >= 1")
        require(self.max_staleness >= 0, "policy.max_staleness", "must be >= 0 (0 refuses every stale update)")
        require(self.staleness_weight in STALENESS_WEIGHTS, "policy.staleness_weight", f"must be one of {STALENESS_WEIGHTS}")
        require(self.eval_every >= 1, "policy.eval_every", "must be >= 1")
        require(isinstance(self.quorum, int) and not isinstance(self.quorum, bool) and self.quorum >= 0, "policy.quorum",
                "must be an integer >= 0 (0: the whole cohort)")
        require(_is_real(self.deadline_seconds) and 0 <= self.deadline_seconds <= 1e9, "policy.deadline_seconds",
                "must be in [0, 1e9] simulated seconds (0: no deadline)")
        require(_is_real(self.compute_mu) and abs(self.compute_mu) <= MAX_LOG_SECONDS, "policy.compute_mu",
                f"must be a number in [-{MAX_LOG_SECONDS:g}, {MAX_LOG_SECONDS:g}] (the log of seconds per step)")
        require(_is_real(self.compute_sigma) and 0 <= self.compute_sigma <= 5, "policy.compute_sigma", "must be in [0, 5]")
        require(_is_real(self.slow_share) and 0 <= self.slow_share <= 1, "policy.slow_share", "must be in [0, 1]")
        require(_is_real(self.slow_factor) and 1 <= self.slow_factor <= 1e6, "policy.slow_factor", "must be in [1, 1e6]")
        require(_is_real(self.network_seconds) and 0 <= self.network_seconds <= 1e9, "policy.network_seconds",
                "must be in [0, 1e9]")
        if self.kind != "fedbuff":
            for key in changed_keys(self, FEDBUFF_KEYS):
                report(f"policy.{key}: applies to policy.kind = 'fedbuff' only")
        if self.kind != "quorum":
            for key in changed_keys(self, QUORUM_KEYS):
                report(f"policy.{key}: applies to policy.kind = 'quorum' only")
        if self.kind == "quorum" and self.quorum == 0 and self.deadline_seconds == 0:
            report("policy.quorum: policy.kind = 'quorum' needs a quorum or a deadline_seconds (with neither it is 'sync')")

    @property
    def timed(self) -> bool:
        """Whether rounds run on the virtual clock: always under quorum and fedbuff, under sync when a clock key is set."""
        return self.kind != "sync" or bool(changed_keys(self, CLOCK_KEYS))


def _is_real(value: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def changed_keys(settings: PolicySettings, names: tuple[str, ...]) -> list[str]:
    """Those of `names` whose value differs from its default."""
    return [f.name for f in fields(settings) if f.name in names and getattr(settings, f.name) != f.default]


def check_policy_combinations(config: RunConfig) -> None:
    """Refuse, naming both settings, what policy.kind = 'fedbuff' or 'quorum' cannot account or does not support."""
    if config.policy.kind == "quorum":
        require(not config.secagg.enabled, "secagg.enabled",
                "secure aggregation cannot be combined with policy.kind = 'quorum': the dropped stragglers' masks would "
                "have to be recovered every round; use policy.kind = 'sync' (SecAgg's own dropout handling)")
    if config.policy.kind != "fedbuff":
        return
    fedbuff = "policy.kind = 'fedbuff'"
    require(not config.privacy.enabled, "privacy.noise_multiplier",
            f"differential privacy cannot be combined with {fedbuff}: fedlm accounts DP per synchronous round (a "
            "sampled cohort, noise on its sum); asynchronous DP accounting is not implemented")
    require(not config.secagg.enabled, "secagg.enabled",
            f"secure aggregation cannot be combined with {fedbuff}: its masks cancel only in one round's cohort sum, "
            "while the buffer weighs each update by its own staleness")
    require(config.strategy.aggregator == "mean", "strategy.aggregator",
            f"{config.strategy.aggregator!r} cannot be combined with {fedbuff}: a robust aggregator needs every update "
            "as a row, the buffer folds them into one sum; use strategy.aggregator = 'mean'")
    require(config.lora.aggregation != "svd", "lora.aggregation",
            f"'svd' cannot be combined with {fedbuff}: it needs every update as a row; use 'fedit' or 'ffa'")
    require(config.simulation.executor == "serial", "simulation.executor",
            f"{config.simulation.executor!r} cannot be combined with {fedbuff}: the asynchronous simulation trains "
            "in this process; use simulation.executor = 'serial'")
    require(config.federation.sampling == "fixed", "federation.sampling",
            f"'poisson' does not apply to {fedbuff}: clients are dispatched one at a time as a training slot frees "
            "(policy.concurrency at once)")
