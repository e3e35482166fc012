"""One global, a global per genre, or IFCA's learned clusters: which serves each genre of the plays better?

Three methods on the same cohorts (engine.sample_cohort: every round the same clients, the
same training tokens), from the same initial adapter:

one_global  FedAvg (McMahan et al. 2017, arXiv:1602.05629): one global over every cohort client.
by_genre    one global per genre (clusters.assign = "key", key = "genre"): each cohort client trains
            its play's genre's global only; each evaluation client is scored under its genre's.
ifca        IFCA (Ghosh et al. 2020, arXiv:2006.04088; clusters.assign = "loss") with as many globals
            as genres: each client trains (and is scored under) the global with the lowest loss on
            its own first training batches. IFCA may put most clients under one global: the
            results count the globals that trained each round and those the evaluation clients chose.

The evaluation clients are `eval_per_genre` held-out speakers of each genre (never trained),
each scored on its own test text (fedlm.eval.personalization.own_test_sets) under the global the
method gives it; a genre's figure pools its clients' tokens. With one genre every method holds
one global and is the one-global run, bit for bit (sim.clustered).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlm.config import RunConfig, apply_overrides
from fedlm.core.rng import make_rng
from fedlm.eval.metrics import EvalResult
from fedlm.eval.personalization import own_test_sets
from fedlm.experiment.clusters_settings import ClustersSettings, check_genres
from fedlm.experiment.compare import plain_config
from fedlm.experiment.methods import Log, RoundLog, federated_simulation, reset_adapter
from fedlm.server.cluster_settings import ClusterSettings
from fedlm.sim.cluster_assignment import client_segments
from fedlm.sim.clustered import simulate_clustered
from fedlm.sim.engine import sample_cohort, simulate
from fedlm.sim.setup import Simulation, build_eval_set, prepare
from fedlm.work import EvalSet

METHODS = ("one_global", "by_genre", "ifca")
LABELS = {"one_global": "one global", "by_genre": "a global per genre", "ifca": "IFCA"}


@dataclass(frozen=True)
class Bench:
    """What every method shares: the loaded simulation over the chosen genres, and the evaluation clients' own text."""

    sim: Simulation  # population: the chosen genres' speakers that are not held out; eval_clients: the held-out ones
    genres: tuple[str, ...]
    genre_of: dict[str, str]  # every training and evaluation client's genre
    eval_sets: dict[str, EvalSet]  # each evaluation client's own test text


@dataclass(frozen=True)
class Trained:
    """A method's globals, the global each evaluation client is scored under, and how the cohorts were assigned."""

    vectors: dict[str, np.ndarray]
    choice: dict[str, str]  # evaluation client -> key of its global
    assignments: list[dict[str, str]]  # per round: cohort client -> key
    training_tokens: int
    seconds: float


class ClusterRoundLog(RoundLog):
    """One line a round: the pooled held-out perplexity, and how many globals trained."""

    def round_done(self, record: dict[str, Any]) -> None:
        clusters = record.get("clusters", {})
        trained = f", {sum(1 for c in clusters.values() if c['clients'])} of {len(clusters)} globals trained" if clusters else ""
        self.log(f"  {self.name} round {record['round']}: pooled held-out perplexity {record['eval']['perplexity']:.2f}"
                 f"{trained} ({record['seconds']:.0f} s)")


def method_configs(config: RunConfig, settings: ClustersSettings, genres: Sequence[str]) -> dict[str, RunConfig]:
    """Every method's run config, built (and so checked) before the model loads; one genre: each is the one global."""
    base = apply_overrides(dataclasses.replace(plain_config(config), clusters=ClusterSettings()), {
        "federation": {"rounds": settings.rounds, "clients_per_round": settings.clients_per_round, "sampling": "fixed"},
        "client": {"local_steps": settings.local_steps},
        # eval.clients: prepare's own draw, replaced by choose_clients' per genre
        "eval": {"mode": "held_out", "clients": 1,
                 "max_sequences": settings.eval_sequences, "multiple_choice": "off"},
    })
    if len(genres) == 1:
        return dict.fromkeys(METHODS, base)
    count = len(genres)
    return {
        "one_global": base,
        "by_genre": apply_overrides(base, {"clusters": {"count": count, "assign": "key", "key": "genre"}}),
        "ifca": apply_overrides(base, {"clusters": {"count": count, "assign": "loss",
                                                    "probe_batches": settings.probe_batches}}),
    }


def choose_clients(sim: Simulation, genres: Sequence[str], settings: ClustersSettings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training population, evaluation clients): a seeded `eval_per_genre` of each genre's speakers with both training
    and test text, held out; the genres' other speakers train."""
    segments = client_segments(sim.dataset.client_ids(), "genre")
    held_out: list[str] = []
    for genre in genres:
        members = [c for c in sim.dataset.client_ids() if segments[c] == genre]
        candidates = [c for c in members if sim.dataset.get(c).train and sim.dataset.get(c).test]
        if len(candidates) < settings.eval_per_genre or len(members) <= settings.eval_per_genre:
            raise ValueError(f"experiment.eval_per_genre = {settings.eval_per_genre}: genre {genre!r} has {len(members)} "
                             f"speakers, {len(candidates)} with training and test text; lower it, or data.min_lines")
        pick = make_rng(sim.config.run.seed, "experiment-eval-clients", genre).choice(
            len(candidates), size=settings.eval_per_genre, replace=False)
        held_out += [candidates[i] for i in pick]
    eval_clients = tuple(sorted(held_out))
    population = tuple(c for c in sim.dataset.client_ids() if segments[c] in genres and c not in eval_clients)
    return population, eval_clients


def make_bench(config: RunConfig, settings: ClustersSettings) -> Bench:
    """Load the data and the base model once, keep the chosen genres' speakers, and hold out each genre's evaluation clients."""
    genres = check_genres(settings)
    sim = prepare(config)
    population, eval_clients = choose_clients(sim, genres, settings)
    eval_set = build_eval_set(sim.work, sim.base.tokenizer, sim.dataset, eval_clients, config)
    sim = federated_simulation(dataclasses.replace(sim, eval_clients=eval_clients, eval_set=eval_set), config, population)
    genre_of = client_segments((*population, *eval_clients), "genre")
    return Bench(sim, genres, genre_of, own_test_sets(sim, eval_clients, settings.eval_sequences))


def run_method(bench: Bench, name: str, config: RunConfig, log: Log) -> Trained:
    """Train one method's globals from the initial adapter on the bench's cohorts."""
    started = time.perf_counter()
    sim = federated_simulation(bench.sim, config, bench.sim.population)
    reset_adapter(sim.adapter)
    if name == "one_global":
        result = simulate(sim, ClusterRoundLog(name, log))
        vectors = {"global": result.state.global_vector.copy()}
        choice = dict.fromkeys(sim.eval_clients, "global")
        assignments = [dict.fromkeys(sample_cohort(sim, r), "global") for r in range(1, len(result.records) + 1)]
    else:
        result = simulate_clustered(sim, ClusterRoundLog(name, log))
        vectors = {key: state.global_vector.copy() for key, state in result.states.items()}
        choice, assignments = dict(result.eval_assignment), list(result.assignments)
    tokens = sum(record["train_tokens"] or 0 for record in result.records)
    return Trained(vectors, choice, assignments, tokens, time.perf_counter() - started)


def score_clients(bench: Bench, trained: Trained) -> dict[str, EvalResult]:
    """Each evaluation client on its own test text, under the global the method gives it."""
    adapter, scores = bench.sim.adapter, {}
    for key, vector in trained.vectors.items():
        group = [c for c in bench.sim.eval_clients if trained.choice[c] == key]
        if group:
            adapter.write_shared(vector)
            adapter.write_private(adapter.initial_private)
            scores.update({c: bench.sim.work.evaluate(adapter.model, bench.eval_sets[c]) for c in group})
    reset_adapter(adapter)
    return scores


def by_genre(clients: Sequence[str], genre_of: dict[str, str], keys: dict[str, str]) -> dict[str, dict[str, int]]:
    """genre -> {global key: clients}: how a method's assignment splits each genre."""
    counts: dict[str, Counter] = {}
    for client in clients:
        counts.setdefault(genre_of[client], Counter())[keys[client]] += 1
    return {genre: dict(sorted(c.items())) for genre, c in sorted(counts.items())}


def method_entry(bench: Bench, name: str, trained: Trained, scores: dict[str, EvalResult], score_seconds: float) -> dict[str, Any]:
    genre_of = bench.genre_of
    per_genre = {g: sum((scores[c] for c in scores if genre_of[c] == g), EvalResult()) for g in bench.genres}
    cohort_keys = [(client, key) for rnd in trained.assignments for client, key in rnd.items()]
    return {
        "name": name,
        "label": LABELS[name],
        "globals": len(trained.vectors),
        "globals_trained_per_round": [len(set(rnd.values())) for rnd in trained.assignments],
        "eval_globals": len(set(trained.choice.values())),
        "cohort_assignment": by_genre([c for c, _ in cohort_keys], genre_of, dict(cohort_keys)) if cohort_keys else {},
        "eval_assignment": by_genre(sorted(trained.choice), genre_of, trained.choice),
        "by_genre": {g: r.as_dict() for g, r in per_genre.items()},
        "pooled": sum(scores.values(), EvalResult()).as_dict(),
        "per_client": {c: {"genre": genre_of[c], "loss": r.loss, "tokens": r.tokens} for c, r in sorted(scores.items())},
        "training_tokens": trained.training_tokens,
        "train_seconds": round(trained.seconds, 1),
        "score_seconds": round(score_seconds, 1),
        "seconds": round(trained.seconds + score_seconds, 1),
    }


def results_dict(bench: Bench, settings: ClustersSettings, methods: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    config, sim = bench.sim.config, bench.sim
    sequences = settings.rounds * settings.clients_per_round * settings.local_steps * config.client.batch_size \
        * config.client.grad_accumulation
    cohorts = [c for r in range(1, settings.rounds + 1) for c in sample_cohort(sim, r)]
    return {
        "model": config.model.name,
        "task": config.task.kind,
        "seed": config.run.seed,
        "dataset": sim.dataset.name,
        "genres": list(bench.genres),
        "experiment": dataclasses.asdict(settings),
        "budget": {"sequences": sequences, "seq_len": config.data.seq_len, "tokens": sequences * config.data.seq_len,
                   "batch_size": config.client.batch_size, "lr": config.client.lr},
        "clients": {g: {"training": sum(1 for c in sim.population if bench.genre_of[c] == g),
                        "eval": sum(1 for c in sim.eval_clients if bench.genre_of[c] == g),
                        "cohort": sum(1 for c in cohorts if bench.genre_of[c] == g)} for g in bench.genres},
        "methods": methods,
        "wall_seconds": round(seconds, 1),
    }


def run_cluster_comparison(
    config: RunConfig, settings: ClustersSettings, log: Log | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and score every method; `on_progress` sees the results so far after each method."""
    log = log or (lambda message: None)
    started = time.perf_counter()
    configs = method_configs(config, settings, check_genres(settings))
    bench = make_bench(configs["one_global"], settings)
    counts = Counter(bench.genre_of[c] for c in bench.sim.population)
    log(f"loaded {config.model.name}: {len(bench.genres)} genres ({', '.join(f'{g} {counts[g]}' for g in bench.genres)} "
        f"training speakers), {len(bench.sim.eval_clients)} held out")
    methods = []
    for name, method_config in configs.items():
        log(f"{name} ...")
        trained = run_method(bench, name, method_config, log)
        scoring = time.perf_counter()
        scores = score_clients(bench, trained)
        methods.append(method_entry(bench, name, trained, scores, time.perf_counter() - scoring))
        log(f"{name}: pooled loss {methods[-1]['pooled']['loss']:.4f} on the evaluation clients' own text "
            f"({methods[-1]['seconds']:.0f} s)")
        if on_progress is not None:
            on_progress(results_dict(bench, settings, methods, time.perf_counter() - started))
    return results_dict(bench, settings, methods, time.perf_counter() - started)
