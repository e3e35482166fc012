"""The simulator's own cost per round: a trivial client workload through the real round engine.

Each client returns the values it received plus a constant, every client in every
round: the workload the peer benchmark runs in Flower and pfl as well. The rounds go
through the same code as `fedlm simulate` (round engine, client-side update pipeline,
executor, fold in cohort order); only local training is replaced by the constant. What
remains is the framework's overhead: the memory traffic of the vectors plus whatever
it does per client.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from fedlm.config import LoraSettings, SimulationSettings, StrategySettings
from fedlm.core.rng import make_rng
from fedlm.core.types import Update
from fedlm.core.vectors import make_spec
from fedlm.server.rounds import ServerState, close_round, initial_state, make_tasks, open_round
from fedlm.sim.cohort import ClientJob, Executor, Trainer, make_jobs
from fedlm.sim.engine import fold_cohort
from fedlm.sim.executors import make_executor
from fedlm.sim.rss import RssSampler, lifetime_peak_bytes
from fedlm.updates.build import build_pipeline
from fedlm.updates.client import make_encoder
from fedlm.updates.pipeline import Pipeline


def make_constant_trainer(pipeline: Pipeline, constant: float, seed: int = 0) -> Trainer:
    """A stand-in for local training: new parameters = received + `constant`, then the client pipeline."""
    encode = make_encoder(pipeline, seed=seed)
    shift = np.float32(constant)

    def train(job: ClientJob, global_vector: np.ndarray, out: np.ndarray) -> Update:
        np.add(global_vector, shift, out=out)  # "trained" parameters
        np.subtract(out, global_vector, out=out)  # the update: new - global, as run_task makes it
        task = job.task
        return Update(task.round, task.version, task.client_id, 1, out, encode(out, task, job.residual))

    return train


@dataclass(frozen=True)
class ConstantTrainerFactory:
    """Builds the constant trainer in a worker (nothing to load)."""

    pipeline: Pipeline
    constant: float = 1.0
    preload: tuple[str, ...] = ("fedlm.sim.bench",)

    def __call__(self, threads: int) -> Trainer:
        return make_constant_trainer(self.pipeline, self.constant)


@dataclass(frozen=True)
class BenchResult:
    clients: int
    params: int
    rounds: int  # measured rounds, after one warm-up round
    executor: str
    workers: int  # clients run at once (1 for serial)
    seconds_per_round_median: float
    seconds_per_round_min: float
    first_round_seconds: float  # the warm-up round
    peak_rss_bytes: int  # sampled during the rounds: this process plus its local workers
    baseline_rss_bytes: int  # the same, just before the first round
    process_peak_rss_bytes: int  # this process's lifetime peak (ru_maxrss), imports included
    global_shift: float  # mean of (final global - initial global): the constant times the rounds run
    floor_seconds_per_round: float  # baseline, same run: numpy reading and writing N vectors of P, nothing else

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def memory_floor(clients: int, params: int, repeats: int = 3) -> float:
    """Seconds to read and write `clients` vectors of `params` float32 once (np.add, one thread): the floor."""
    source, target = np.ones(params, np.float32), np.empty(params, np.float32)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(clients):
            np.add(source, np.float32(1), out=target)
        best = min(best, time.perf_counter() - began)
    return best


def bench_pipeline(params: int) -> Pipeline:
    """`fedlm simulate`'s default pipeline (plain FedAvg) over a vector of `params` values."""
    spec = make_spec([("update", (params,))])
    return build_pipeline(StrategySettings(), LoraSettings(), spec)


def run_round(
    state: ServerState, population: tuple[str, ...], pipeline: Pipeline, executor: Executor, private: dict[str, np.ndarray]
) -> ServerState:
    """One round of the whole population through the engine; every client must answer."""
    rnd = open_round(state, population, pipeline)
    jobs = make_jobs(make_tasks(rnd), private, np.empty(0, np.float32))
    fold_cohort(rnd, state.global_vector, jobs, executor)
    state, outcome = close_round(state, rnd)
    if len(outcome.accepted) != len(population):
        raise RuntimeError(f"round {outcome.round}: only {len(outcome.accepted)} of {len(population)} clients answered")
    return state


def bench_rounds(
    *, clients: int, params: int, rounds: int, settings: SimulationSettings | None = None, constant: float = 1.0, seed: int = 0
) -> BenchResult:
    """Run one warm-up round and `rounds` measured ones of the constant workload; time and sample memory."""
    if clients < 1 or params < 1 or rounds < 1:
        raise ValueError("clients, params and rounds must each be >= 1")
    settings = settings or SimulationSettings()
    pipeline = bench_pipeline(params)
    population = tuple(f"client-{i:07d}" for i in range(clients))
    start = make_rng(seed, "bench-global").standard_normal(params, dtype=np.float32)
    state = initial_state(start, pipeline)
    private: dict[str, np.ndarray] = {}
    executor = make_executor(settings, ConstantTrainerFactory(pipeline, constant), size=params)
    seconds = []
    try:
        with RssSampler(executor.worker_pids) as sampler:
            for _ in range(rounds + 1):
                began = time.perf_counter()
                state = run_round(state, population, pipeline, executor, private)
                seconds.append(time.perf_counter() - began)
        workers = executor.worker_count()
    finally:
        executor.close()
    measured = seconds[1:]
    return BenchResult(
        clients=clients, params=params, rounds=rounds, executor=settings.executor, workers=workers,
        seconds_per_round_median=statistics.median(measured), seconds_per_round_min=min(measured),
        first_round_seconds=seconds[0], peak_rss_bytes=sampler.peak, baseline_rss_bytes=sampler.baseline,
        process_peak_rss_bytes=lifetime_peak_bytes(),
        global_shift=float(np.mean(state.global_vector.astype(np.float64) - start)),
        floor_seconds_per_round=memory_floor(clients, params),
    )
