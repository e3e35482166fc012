"""Federated retrieval against its baselines, at an equal number of training pairs, on held-out clients' own indices.

The question the issue asks before anyone federates a retriever: does a query encoder
trained by FedAvg (McMahan et al. 2017, arXiv:1602.05629) on the clients' own inverse-cloze
pairs (Lee et al. 2019, arXiv:1906.00300) retrieve better than the base sentence encoder
on collections it never saw, and how far is it from training on the pooled pairs? Rows:

  base               all-MiniLM-L6-v2 as shipped (no training)
  federated          the "retrieval" client work through the ordinary simulation engine:
                     R rounds x C clients x S local steps x batch B
  federated_rerank   that encoder's top retrieval.candidates, reordered by a cross-encoder
                     trained federatedly ("rerank" client work) on the same budget
  local_only         each of a few training clients alone for R*C*S steps of batch B (mean)
  centralized        one optimizer over the pooled pairs of every training client, R*C*S steps

Every trained row sees R*C*S*B (query, passage) pairs, counted at the loss. Held-out clients
never train; each is scored on its whole collection (all its documents, up to `queries`
queries drawn by the inverse cloze task with the query sentence taken out of its document;
fedlm.work.retrieval). Which clients are held out is fixed by `split_seed`, so the spread
over run seeds is the spread of training (LoRA init, pair draw, cohorts, batches, dropout).
The training loops are the client's own (fedlm.client.train) and the adapter is reset
between rows (fedlm.experiment.methods), so rows differ only in what data one optimizer sees.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedlm.client.train import run_task
from fedlm.config import ConfigError, RunConfig, apply_overrides
from fedlm.core.rng import make_rng
from fedlm.core.types import Task
from fedlm.eval.metrics import EvalResult
from fedlm.experiment.compare import plain_config
from fedlm.experiment.methods import federated_simulation, reset_adapter, train_centralized
from fedlm.retrieval.batches import PairSet
from fedlm.sim.engine import simulate
from fedlm.sim.events import SilentReporter
from fedlm.sim.setup import Simulation, prepare, split_population
from fedlm.work import make_work
from fedlm.work.retrieval import CollectionEvalSet

Log = Callable[[str], None]
METHODS = ("base", "federated", "federated_rerank", "local_only", "centralized")


@dataclass(frozen=True)
class CompareSettings:
    """The shape of the comparison: the federated budget, the held-out evaluation, the seeds."""

    rounds: int = 4  # R
    clients_per_round: int = 4  # C
    local_steps: int = 4  # S, optimizer steps per client per round
    batch_size: int = 16  # B, (query, passage) pairs per step; the other pairs of a batch are the negatives
    queries: int = 64  # N, inverse-cloze queries per held-out client
    held_out: int = 2  # evaluation clients, never trained on
    local_clients: int = 2  # local-only: training clients that each train alone
    split_seed: int = 0  # which clients are held out (the same for every run seed)
    seeds: tuple[int, ...] = (0, 1, 2)
    rerank: bool = True  # run the federated encoder + reranker row
    skip: tuple[str, ...] = ()  # rows left out (e.g. a reranker-only run: local_only, centralized)

    def __post_init__(self) -> None:
        for key in ("rounds", "clients_per_round", "local_steps", "batch_size", "queries", "held_out", "local_clients"):
            if getattr(self, key) < 1:
                raise ConfigError(f"rag compare: {key} must be >= 1, got {getattr(self, key)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"rag compare: seeds must be distinct and at least one, got {self.seeds}")
        unknown = sorted(set(self.skip) - set(METHODS) | set(self.skip) & {"base", "federated"})
        if unknown:
            raise ConfigError(f"rag compare: cannot skip {unknown}; skippable rows: local_only, centralized, "
                              "federated_rerank (base and federated are every table's reference)")

    @property
    def steps(self) -> int:
        """Optimizer steps of the whole federated run (and of every other trained row)."""
        return self.rounds * self.clients_per_round * self.local_steps

    @property
    def pairs(self) -> int:
        return self.steps * self.batch_size


@dataclass
class PairCounter:
    """A client work's training loss that counts the (query, passage) pairs of every batch it is given."""

    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor]
    pairs: int = 0

    def __call__(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        self.pairs += len(batch)
        return self.loss_fn(model, batch)


@dataclass(frozen=True)
class CountedWork:
    """The simulation's client work with its loss counted (the engine's trainer calls `work.loss`)."""

    work: Any
    counter: PairCounter

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return self.counter(model, batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.work, name)


@dataclass
class MethodScore:
    name: str
    recall: float  # recall@10 over every held-out query
    mrr: float  # MRR@10
    queries: int
    pairs: int  # (query, passage) pairs the row's training loss saw (local-only: each client's)
    seconds: float  # training and evaluation
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RetrievalBench:
    """One seed's loaded encoder, its training and held-out clients, and the held-out collections."""

    sim: Simulation
    config: RunConfig
    settings: CompareSettings
    clients: tuple[str, ...]  # training clients
    held_out: tuple[str, ...]
    collections: CollectionEvalSet
    federated_vector: np.ndarray | None = None  # the federated row's encoder: the reranker's first stage


class RoundLog(SilentReporter):
    """One line a round, so that a long comparison shows it is alive (losses only: no client's text)."""

    def __init__(self, name: str, log: Log) -> None:
        self.name, self.log = name, log

    def round_done(self, record: dict[str, Any]) -> None:
        self.log(f"  {self.name} round {record['round']}: train loss {record['train_loss']:.3f} "
                 f"({record['seconds']:.0f} s)")


def seed_config(config: RunConfig, settings: CompareSettings, seed: int, kind: str = "retrieval") -> RunConfig:
    """The run's model, data, client and retrieval settings under plain FedAvg with the comparison's shape.

    eval.max_sequences = 1 keeps `prepare`'s own evaluation set small: the comparison scores
    its own held-out collections, and the engine's per-round evaluation is switched off. The
    clients train serially on this process's one adapter, where the pairs are counted.
    """
    return apply_overrides(plain_config(config), {
        "run": {"seed": seed}, "task": {"kind": kind}, "simulation": {"executor": "serial"},
        "federation": {"rounds": settings.rounds, "clients_per_round": settings.clients_per_round, "sampling": "fixed"},
        "client": {"local_steps": settings.local_steps, "batch_size": settings.batch_size},
        "eval": {"clients": settings.held_out, "max_sequences": 1},
    })


def held_out_collections(work: Any, tokenizer: Any, dataset: Any, clients: Sequence[str],
                         queries: int) -> CollectionEvalSet:
    """Each held-out client's whole collection (train and test documents: it never trains), up to `queries` queries."""
    made, cut, dropped = [], 0, 0
    for client in clients:
        data = dataset.get(client)
        collection, client_cut, client_dropped = work.collection(tokenizer, client, [*data.train, *data.test], queries)
        made.append(collection)
        cut, dropped = cut + client_cut, dropped + client_dropped
    return CollectionEvalSet(tuple(made), int(tokenizer.pad_token_id), truncated=cut, dropped=dropped)


def make_bench(config: RunConfig, settings: CompareSettings, seed: int) -> RetrievalBench:
    """Load the encoder with a fresh adapter for `seed`, hold out `settings.held_out` clients, build their collections.

    Which clients are held out, and their queries, come from `split_seed` alone: every run
    seed is scored on the same collections, so the base row is the same for all of them.
    """
    run_config = seed_config(config, settings, seed)
    sim = prepare(run_config, report=False)
    split_config = dataclasses.replace(run_config, run=dataclasses.replace(run_config.run, seed=settings.split_seed))
    split_work = make_work(split_config)
    split_data = split_work.load_federation()
    clients, held_out = split_population(split_data, split_config, "held_out")
    if len(clients) < max(settings.clients_per_round, settings.local_clients):
        raise ConfigError(f"rag compare: {len(clients)} training clients, fewer than clients_per_round = "
                          f"{settings.clients_per_round} or local_clients = {settings.local_clients}")
    collections = held_out_collections(split_work, sim.base.tokenizer, split_data, held_out, settings.queries)
    sim = dataclasses.replace(sim, population=clients, eval_clients=held_out,
                              eval_set=CollectionEvalSet((), collections.pad_id))  # no per-round evaluation
    return RetrievalBench(sim, run_config, settings, clients, held_out, collections)


def evaluate(bench: RetrievalBench) -> EvalResult:
    """The encoder as the adapter stands, on every held-out collection."""
    return bench.sim.work.evaluate(bench.sim.adapter.model, bench.collections)


def score(name: str, result: EvalResult, pairs: int, started: float, **extra: Any) -> MethodScore:
    ranking = result.ranking
    return MethodScore(name, ranking.recall, ranking.mrr, ranking.queries, pairs, time.perf_counter() - started, extra)


def run_base(bench: RetrievalBench, log: Log) -> MethodScore:
    started = time.perf_counter()
    reset_adapter(bench.sim.adapter)
    return score("base", evaluate(bench), 0, started)


def train_federated(sim: Simulation, config: RunConfig, clients: tuple[str, ...], name: str,
                    log: Log) -> tuple[np.ndarray, int]:
    """FedAvg through the simulation engine from the initial adapter: the global vector and the pairs trained on."""
    counter = PairCounter(sim.work.loss)
    federated = dataclasses.replace(federated_simulation(sim, config, clients), work=CountedWork(sim.work, counter))
    reset_adapter(sim.adapter)
    result = simulate(federated, RoundLog(name, log))
    return result.state.global_vector.copy(), counter.pairs


def run_federated(bench: RetrievalBench, log: Log) -> MethodScore:
    started = time.perf_counter()
    vector, pairs = train_federated(bench.sim, bench.config, bench.clients, "federated", log)
    bench.federated_vector = vector
    bench.sim.adapter.write_shared(vector)
    return score("federated", evaluate(bench), pairs, started)


def run_federated_rerank(bench: RetrievalBench, log: Log) -> MethodScore:
    """A cross-encoder trained by FedAvg on the same budget reorders the federated encoder's top candidates.

    Its lists (a positive and retrieval.negatives hard negatives mined from the client's own
    documents) count as one pair each, as a query with its positive.
    """
    from fedlm.work.rerank import RerankEvalSet, candidate_lists, score_lists

    if bench.federated_vector is None:
        raise RuntimeError("the federated_rerank row needs the federated row's encoder: run 'federated' first")
    started = time.perf_counter()
    rerank_config = seed_config(bench.config, bench.settings, bench.config.run.seed, kind="rerank")
    reranker = prepare(rerank_config, report=False)
    reranker = dataclasses.replace(reranker, eval_set=RerankEvalSet((), bench.collections.pad_id))
    vector, pairs = train_federated(reranker, rerank_config, bench.clients, "reranker", log)
    reranker.adapter.write_shared(vector)
    encoder = bench.sim.adapter
    encoder.write_shared(bench.federated_vector)
    encoder.model.eval()
    settings, seq_len = bench.config.retrieval, bench.config.data.seq_len
    batch_size, total = bench.config.eval.batch_size, EvalResult()
    reranker.adapter.model.eval()
    for collection in bench.collections.collections:
        lists = candidate_lists(collection, encoder.model, bench.collections.pad_id, candidates=settings.candidates,
                                length=seq_len)
        total = total + score_lists(reranker.adapter.model, lists, bench.collections.pad_id, batch_size=batch_size)
    return score("federated_rerank", total, pairs, started, candidates=settings.candidates)


def whole_budget(bench: RetrievalBench) -> Any:
    """The client settings of one optimizer run for the federated run's whole budget (R*C*S steps of batch B)."""
    settings = bench.settings
    return dataclasses.replace(bench.config.client, local_steps=settings.steps, batch_size=settings.batch_size)


def run_local_only(bench: RetrievalBench, log: Log) -> MethodScore:
    """Each of `local_clients` seeded training clients alone, the whole budget on its own pairs; their mean score."""
    started, sim, settings = time.perf_counter(), bench.sim, bench.settings
    adapter, seed = sim.adapter, bench.config.run.seed
    pick = make_rng(seed, "local-only").choice(len(bench.clients), size=settings.local_clients, replace=False)
    chosen = tuple(sorted(bench.clients[i] for i in pick))
    client_settings, buffer = whole_budget(bench), np.empty_like(adapter.initial_shared)
    per_client, pairs = {}, set()
    for client in chosen:
        counter = PairCounter(sim.work.loss)
        update = run_task(adapter, Task(round=1, version=0, client_id=client), global_vector=adapter.initial_shared,
                          private_vector=adapter.initial_private.copy(), train_blocks=sim.train_blocks(client),
                          settings=client_settings, seed=seed, out=buffer, loss_fn=counter, rounds=1)
        adapter.write_shared(adapter.initial_shared + update.vector)
        ranking = evaluate(bench).ranking
        per_client[client] = {"recall": ranking.recall, "mrr": ranking.mrr, "pairs": counter.pairs}
        pairs.add(counter.pairs)
        log(f"  local-only client {len(per_client)}/{len(chosen)}: recall@10 {ranking.recall:.3f}")
    if len(pairs) != 1:
        raise RuntimeError(f"local-only clients trained on different numbers of pairs: {sorted(pairs)}")
    reset_adapter(adapter)
    recall = float(np.mean([c["recall"] for c in per_client.values()]))
    mrr = float(np.mean([c["mrr"] for c in per_client.values()]))
    queries = bench.collections.counts()["queries"]
    return MethodScore("local_only", recall, mrr, queries, pairs.pop(), time.perf_counter() - started,
                       {"clients": list(per_client.values())})  # figures by position, never by client id


def pool_pairs(parts: Sequence[PairSet]) -> PairSet:
    """Several clients' pairs as one set (the centralized row's data)."""
    queries = tuple(q for p in parts for q in p.queries)
    return PairSet(queries, tuple(d for p in parts for d in p.passages), parts[0].pad_id)


def run_centralized(bench: RetrievalBench, log: Log) -> MethodScore:
    """One optimizer over the pooled pairs of every training client, for the federated run's number of steps."""
    started, sim = time.perf_counter(), bench.sim
    pooled = pool_pairs([sim.train_blocks(c) for c in bench.clients])
    counter = PairCounter(sim.work.loss)
    result = train_centralized(sim.adapter, pooled, whole_budget(bench), seed=bench.config.run.seed, loss_fn=counter)
    return score("centralized", evaluate(bench), counter.pairs, started, pooled_pairs=len(pooled),
                 train_loss=result.mean_loss)


RUNNERS: dict[str, Callable[[RetrievalBench, Log], MethodScore]] = {
    "base": run_base, "federated": run_federated, "federated_rerank": run_federated_rerank,
    "local_only": run_local_only, "centralized": run_centralized,
}


def run_seed(config: RunConfig, settings: CompareSettings, seed: int, log: Log = lambda _: None,
             base: MethodScore | None = None) -> tuple[list[MethodScore], dict[str, int]]:
    """Every row for one run seed in METHODS order (federated_rerank only with settings.rerank), and held-out counts.

    `base`, a base row another seed measured, is reused: untrained, on the same collections, it cannot differ.
    """
    bench = make_bench(config, settings, seed)
    counts = {"training_clients": len(bench.clients), **bench.collections.counts()}
    log(f"seed {seed}: {len(bench.clients)} training clients, {len(bench.held_out)} held out "
        f"({counts['queries']} queries over {counts['documents']} documents)")
    scores = []
    for name in METHODS:
        if (name == "federated_rerank" and not settings.rerank) or name in settings.skip:
            continue
        if name == "base" and base is not None:
            scores.append(dataclasses.replace(base, extra={**base.extra, "measured_once": True}))
            continue
        scores.append(RUNNERS[name](bench, log))
        last = scores[-1]
        log(f"seed {seed} {name}: recall@10 {last.recall:.3f}, MRR@10 {last.mrr:.3f}, {last.pairs} pairs, "
            f"{last.seconds:.0f} s")
    reset_adapter(bench.sim.adapter)
    return scores, counts


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value)."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def summarize(runs: dict[int, list[MethodScore]]) -> dict[str, dict[str, Any]]:
    """Per method over the seeds: recall@10, MRR@10 and seconds as mean and std, and the pairs trained on."""
    names = [m.name for m in next(iter(runs.values()))]
    summary = {}
    for name in names:
        rows = [row(scores, name) for scores in runs.values()]
        summary[name] = {"recall": spread([r.recall for r in rows]), "mrr": spread([r.mrr for r in rows]),
                         "seconds": spread([r.seconds for r in rows]), "pairs": sorted({r.pairs for r in rows})}
    return summary


def gain_over_base(runs: dict[int, list[MethodScore]], name: str = "federated") -> dict[str, Any]:
    """`name` minus base, per metric: the mean and std of the per-seed gains, the larger of the two rows' spreads
    (std over seeds), and whether the mean gain exceeds that spread."""
    base = [row(scores, "base") for scores in runs.values()]
    trained = [row(scores, name) for scores in runs.values()]
    out: dict[str, Any] = {}
    for metric in ("recall", "mrr"):
        gains = spread([getattr(t, metric) - getattr(b, metric) for t, b in zip(trained, base, strict=True)])
        largest = max(spread([getattr(r, metric) for r in rows])["std"] for rows in (base, trained))
        out[metric] = {**gains, "largest_spread": largest, "beats_spread": gains["mean"] > largest}
    return out


def row(scores: Sequence[MethodScore], name: str) -> MethodScore:
    return next(m for m in scores if m.name == name)


def run_comparison(config: RunConfig, settings: CompareSettings, log: Log = lambda _: None) -> dict[str, Any]:
    """Every seed's rows, their summary and the federated encoder's gain over base, as one JSON-ready dict."""
    started = time.perf_counter()
    first, *rest = settings.seeds
    done = {first: run_seed(config, settings, first, log)}
    base = row(done[first][0], "base")
    done.update({seed: run_seed(config, settings, seed, log, base=base) for seed in rest})
    runs = {seed: scores for seed, (scores, _) in done.items()}
    return {
        "settings": {**dataclasses.asdict(settings), "steps": settings.steps, "pairs": settings.pairs},
        "model": config.model.name, "lr": config.client.lr, "temperature": config.retrieval.temperature,
        "seq_len": config.data.seq_len, "query_len": config.retrieval.query_len,
        "candidates": config.retrieval.candidates, "torch_threads": torch.get_num_threads(),
        "held_out": {str(seed): counts for seed, (_, counts) in done.items()},
        "runs": {str(seed): [dataclasses.asdict(m) for m in scores] for seed, scores in runs.items()},
        "summary": summarize(runs), "federated_gain": gain_over_base(runs),
        "wall_seconds": time.perf_counter() - started,
    }
