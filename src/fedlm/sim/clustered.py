"""Clustered federated learning in the simulation: several global models, each cohort client trained under one.

IFCA: Ghosh, Chung, Yin, Ramchandran 2020, "An Efficient Framework for Clustered Federated
Learning", arXiv:2006.04088. The run holds `clusters.count` global states (rounds.initial_state:
each its own vector, server optimizer state and version), held by key: "0".."K-1" under
clusters.assign = "loss", the segment names (e.g. the plays' genres) under "key". Each round:

1. the cohort is sampled exactly as the one-global engine samples it (engine.sample_cohort);
2. each cohort client is assigned to one global: under "loss", the global whose mean loss
   (the client work's own loss, no gradient) on the client's first `clusters.probe_batches`
   training batches (its first blocks, in order, client.batch_size to a batch) is lowest (ties go to the first key); under "key", its declared segment.
   While every global is still the same vector (round 1: LoRA's B starts at zero, so every
   global is the base model, and no loss can tell them apart) the clients are dealt to the
   globals instead by a seeded draw: a permutation of the clients from (run seed, round), dealt
   round-robin, so every global gets a share of the cohort and starts to differ from the others;
3. every global runs one synchronous round with its part of the cohort, through the same
   pieces as the one-global engine (open_round, train_cohort, close_round); a global that got
   no client closes an empty round, which leaves its vector and version as they were, so every
   global's round count stays the run's round.

Evaluation: each evaluation client picks a global the same way (IFCA on its own training
samples, or its segment) and is scored under it. The metrics line holds the pooled figures
and, under "clusters", each global's: cohort clients, their mean probe loss, version, train loss
and its evaluation clients' figures. Under eval.mode = "held_out" each global's evaluation
clients are scored together, up to eval.max_sequences sequences per global (a multiple-choice
file's questions, which belong to no client, are asked under each global that is scored);
under "per_site" each site on its own split. Client ids and the assignment itself stay in
memory (ClusteredResult.assignments); no line holds text. With one global the run is the
one-global engine's, bit for bit (tests/sim/test_clustered.py).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedlm.data.blocks import Blocks
from fedlm.eval.metrics import EvalResult
from fedlm.eval.sites import pooled, site_summary
from fedlm.models.lora import export_adapter
from fedlm.privacy.release import reported_sum
from fedlm.server.cluster_settings import ClusterSettings, check_cluster_combinations
from fedlm.server.rounds import (
    OpenRound, RoundOutcome, ServerState, abandon_round, close_round, dominance_warning, initial_state, open_round,
    weight_share,
)
from fedlm.sim.cluster_assignment import Assignment, assign_clients, cluster_keys, forget_old_probes, members
from fedlm.sim.rundir import CLUSTER_ADAPTERS_DIR
from fedlm.sim.cohort import Executor
from fedlm.sim.engine import RunResult, evaluate_global, privacy_fields, sample_cohort, train_cohort
from fedlm.sim.events import Reporter, SilentReporter
from fedlm.sim.setup import Simulation, build_eval_set
from fedlm.sim.trainers import make_sim_executor
from fedlm.updates import wire

log = logging.getLogger(__name__)
EVAL_SET_CACHE = 64  # evaluation sets kept by client group (IFCA's groups change from round to round)


@dataclass
class ClusteredResult(RunResult):
    """A clustered run: `state` is the first key's global (what adapter/ holds); `states` every global's."""

    states: dict[str, ServerState] = field(default_factory=dict)
    assignments: list[dict[str, str]] = field(default_factory=list)  # per round: cohort client -> key (memory only)
    eval_assignment: dict[str, str] = field(default_factory=dict)  # evaluation client -> key, at the last evaluation


@dataclass(frozen=True)
class ClusterRound:
    """One global's part of a round."""

    key: str
    rnd: OpenRound
    outcome: RoundOutcome


# --- one round of every global ------------------------------------------------------------------------


def run_cluster_round(sim: Simulation, key: str, state: ServerState, cohort: tuple[str, ...],
                      private: dict[str, np.ndarray], reporter: Reporter, executor: Executor) -> tuple[ServerState, ClusterRound]:
    """One synchronous round of one global with its part of the cohort (an empty round when it has none)."""
    rnd = open_round(state, cohort, sim.pipeline)
    recovered = train_cohort(sim, state, rnd, private, reporter, executor) if cohort else True
    state, outcome = close_round(state, rnd) if recovered else abandon_round(state, rnd)
    if (warning := dominance_warning(rnd)) is not None:
        log.warning(warning)
    return state, ClusterRound(key, rnd, outcome)


def weighted_train_loss(rounds: Sequence[OpenRound]) -> float | None:
    """The clients' mean train loss, weighted as their updates were (the one-global engine's figure, pooled)."""
    reported = [(r.metrics[c]["train_loss"], r.weights[c]) for r in rounds for c, m in r.metrics.items() if "train_loss" in m]
    return float(np.average([loss for loss, _ in reported], weights=[w for _, w in reported])) if reported else None


def pooled_clipped_share(rounds: Sequence[OpenRound]) -> float | None:
    if any(r.pipeline.privacy is not None for r in rounds):
        return None
    bits = [m["unclipped"] for r in rounds for m in r.metrics.values() if "unclipped" in m]
    return (len(bits) - sum(bits)) / len(bits) if bits else None


def pooled_traffic(parts: Sequence[ClusterRound], size: int, full_model_bytes: int) -> dict[str, Any]:
    """engine.traffic over every global's part of the round."""
    down = wire.dense_bytes(size)
    up = [p.rnd.metrics[c].get("bytes_up", down) for p in parts for c in p.outcome.accepted]
    per_client_up = float(np.mean(up)) if up else 0.0
    return {"bytes_down": down * sum(len(p.rnd.cohort) for p in parts), "bytes_up": int(sum(up)),
            "bytes_down_per_client": down, "bytes_up_per_client": per_client_up,
            "up_vs_full_model": per_client_up / full_model_bytes}


def cluster_figures(part: ClusterRound, state: ServerState, assignment: Assignment, evaluation: EvalResult | None,
                    eval_clients: int) -> dict[str, Any]:
    """One global's entry of the metrics line: counts and losses only."""
    probes = [assignment.probe_loss[c] for c in part.rnd.cohort if c in assignment.probe_loss]
    return {"clients": len(part.rnd.cohort), "accepted": len(part.outcome.accepted), "version": state.version,
            "probe_loss": float(np.mean(probes)) if probes else None, "train_loss": weighted_train_loss([part.rnd]),
            "eval_clients": eval_clients, "eval": evaluation.as_dict() if evaluation is not None else None}


def round_line(sim: Simulation, parts: list[ClusterRound], states: dict[str, ServerState], *, number: int,
               assignment: Assignment, evaluation: Evaluation, seconds: float) -> dict[str, Any]:
    """The round's metrics line: engine.round_record's figures over every global (its "version": the highest
    global version), then each global's own under "clusters"."""
    rounds, size = [p.rnd for p in parts], next(iter(states.values())).global_vector.size
    accepted = [p.rnd.metrics[c] for p in parts for c in p.outcome.accepted]
    record: dict[str, Any] = {
        "round": number,
        "version": max(s.version for s in states.values()),
        "cohort": sum(len(r.cohort) for r in rounds),
        "accepted": sum(len(p.outcome.accepted) for p in parts),
        "failed": sum(len(p.outcome.failed) for p in parts),
        "max_client_share": max(weight_share(r) for r in rounds),  # of the global the client trained
        "clipped_share": pooled_clipped_share(rounds),
        "train_loss": weighted_train_loss(rounds),
        "train_tokens": reported_sum(accepted, "tokens"),
        "redacted": reported_sum(accepted, "redacted"),
        "eval": evaluation.pooled.as_dict(),
        "seconds": round(seconds, 3),
    }
    if evaluation.sites:
        record["sites"] = site_summary(evaluation.sites)
    record.update(pooled_traffic(parts, size, sim.full_model_bytes))
    record.update(privacy_fields(sim, next(iter(states.values()))))
    record["assigned_by"] = assignment.how
    if assignment.how == "loss":
        record["rebalanced"] = assignment.rebalanced
    record["clusters"] = {p.key: cluster_figures(p, states[p.key], assignment, evaluation.by_cluster.get(p.key),
                                                 evaluation.counts.get(p.key, 0)) for p in parts}
    return record


# --- evaluation under each client's global ---------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    pooled: EvalResult
    by_cluster: dict[str, EvalResult]
    counts: dict[str, int]  # evaluation clients per global
    sites: dict[str, EvalResult] = field(default_factory=dict)  # per_site: each site under its global


def load_global(sim: Simulation, state: ServerState) -> None:
    sim.adapter.write_shared(state.global_vector)
    sim.adapter.write_private(sim.adapter.initial_private)


def evaluate_clusters(sim: Simulation, states: dict[str, ServerState], assignment: Assignment,
                      eval_sets: dict[tuple[str, ...], Any]) -> Evaluation:
    """Every evaluation client scored under its global; with one global holding them all, engine.evaluate_global."""
    groups = {key: members(assignment, sim.eval_clients, key) for key in states}
    groups = {key: group for key, group in groups.items() if group}
    counts = {key: len(group) for key, group in groups.items()}
    if len(groups) == 1:
        (key,) = groups
        total, sites = evaluate_global(sim, states[key])
        return Evaluation(total, {key: total}, counts, sites)
    by_cluster, sites = {}, {}
    for key, group in groups.items():
        load_global(sim, states[key])
        if sim.site_sets:
            own = {c: sim.work.evaluate(sim.adapter.model, sim.site_sets[c]) for c in group}
            sites.update(own)
            by_cluster[key] = pooled(own)
        else:
            by_cluster[key] = sim.work.evaluate(sim.adapter.model, group_eval_set(sim, group, eval_sets))
    total = pooled(by_cluster)
    if sim.shared_set is not None:  # per_site: a file's questions belong to no site: asked once, under the first global
        load_global(sim, next(iter(states.values())))
        total = total + sim.evaluate_shared()
    return Evaluation(total, by_cluster, counts, dict(sorted(sites.items())))


def group_eval_set(sim: Simulation, group: tuple[str, ...], cache: dict[tuple[str, ...], Any]) -> Any:
    """The held-out samples of the evaluation clients in `group`, as one evaluation set of up to eval.max_sequences."""
    if group not in cache:
        if len(cache) >= EVAL_SET_CACHE:
            cache.clear()
        cache[group] = build_eval_set(sim.work, sim.base.tokenizer, sim.dataset, group, sim.config)
    return cache[group]


def make_blocks_of(sim: Simulation) -> Callable[[str], Blocks | None]:
    """A client's training blocks for IFCA's probe: a training client's as it trains, an evaluation client's encoded
    here (kept apart from the run's training counts), None when it has none."""
    held_out: dict[str, Blocks | None] = {}
    training = set(sim.population)

    def blocks_of(client: str) -> Blocks | None:
        if client in training:
            return sim.train_blocks(client)
        if client not in held_out:
            samples = sim.dataset.get(client).train
            held_out[client] = sim.work.encode(sim.base.tokenizer, samples).blocks if samples else None
        return held_out[client]

    return blocks_of


# --- the run -------------------------------------------------------------------------------------------------


def simulate_clustered(
    sim: Simulation,
    reporter: Reporter | None = None,
    on_record: Callable[[dict[str, Any], ServerState], None] | None = None,
    private_state: dict[str, np.ndarray] | None = None,
) -> ClusteredResult:
    """Run federation.rounds rounds of every global; `on_record(record, first global's state)` sees each line."""
    check_cluster_combinations(sim.config)
    reporter = reporter or SilentReporter()
    keys = cluster_keys(sim)
    private = {} if private_state is None else private_state
    initial = initial_state(sim.adapter.initial_shared, sim.pipeline)
    states = {key: initial for key in keys}  # frozen states: each global replaces its own as it steps
    if sim.config.monitoring.enabled:
        log.info("monitoring's per-round review does not run under clusters.count > 1 yet")
    base_eval, base_sites = evaluate_global(sim, initial)
    reporter.evaluated("base", base_eval)
    result = ClusteredResult(initial, base_eval, base_eval, base_sites=base_sites, final_sites=base_sites, states=states)
    blocks_of, eval_sets, memo = make_blocks_of(sim), {}, {}
    executor = make_sim_executor(sim, reporter)
    reporter.run_started(sim.config.federation.rounds)
    try:
        for round in range(1, sim.config.federation.rounds + 1):
            started = time.perf_counter()
            cohort = sample_cohort(sim, round)
            reporter.round_started(round, len(cohort))
            assignment = assign_clients(sim, states, cohort, round=round, purpose="cohort", blocks_of=blocks_of,
                                        private=private, memo=memo)
            parts = []
            for key in keys:
                states[key], part = run_cluster_round(sim, key, states[key], members(assignment, cohort, key), private,
                                                      reporter, executor)
                parts.append(part)
            forget_old_probes(memo, states)
            chosen = assign_clients(sim, states, sim.eval_clients, round=round, purpose="eval", blocks_of=blocks_of,
                                    private={}, memo=memo)
            evaluation = evaluate_clusters(sim, states, chosen, eval_sets)
            record = round_line(sim, parts, states, number=round, assignment=assignment, evaluation=evaluation,
                                seconds=time.perf_counter() - started)
            result.states, result.state = dict(states), states[keys[0]]
            result.final_eval, result.final_sites = evaluation.pooled, evaluation.sites
            result.assignments.append(dict(assignment.by_client))
            result.eval_assignment = dict(chosen.by_client)
            result.records.append(record)
            reporter.round_done(record)
            if on_record is not None:
                on_record(record, states[keys[0]])
    finally:
        executor.close()
    return result


# --- what the run leaves behind ----------------------------------------------------------------------------


def export_cluster_adapters(sim: Simulation, states: dict[str, ServerState], out: Path, **export: Any) -> dict[str, str]:
    """Each global as a PEFT adapter dir under out/adapters/<key>/ (what was there before goes first); returns
    key -> its path relative to `out`. `export` is passed on to models.lora.export_adapter (base, card)."""
    root = Path(out) / CLUSTER_ADAPTERS_DIR
    shutil.rmtree(root, ignore_errors=True)
    written = {}
    for key, state in states.items():
        export_adapter(sim.adapter, state.global_vector, root / key, **export)
        written[key] = f"{CLUSTER_ADAPTERS_DIR}/{key}"
    return written


def cluster_summary(settings: ClusterSettings, result: RunResult | None) -> dict[str, Any]:
    """summary.json's "clusters": the settings, each global's version and last figures (and adapter dir, added later)."""
    summary: dict[str, Any] = {"count": settings.count, "assign": settings.assign}
    if settings.assign == "key":
        summary["key"] = settings.key
    if isinstance(result, ClusteredResult):
        summary["versions"] = {key: state.version for key, state in result.states.items()}
        if result.records:
            summary["last_round"] = result.records[-1]["clusters"]
    return summary
