"""The simulator's own cost per round, and the server's cost per update under each aggregation policy.

`bench_rounds`: a trivial client workload through the real round engine. Each client
returns the values it received plus a constant, every client in every round: the workload
the peer benchmark runs in Flower and pfl as well. The rounds go through the same code as
`fedlm simulate` (round engine, client-side update pipeline, executor, fold in cohort
order); only local training is replaced by the constant. What remains is the framework's
overhead: the memory traffic of the vectors plus whatever it does per client.

`bench_policies`: the server side alone, on N synthetic updates of P values. The synchronous
fold (fedlm.server.rounds: open_round, accept_update into the preallocated accumulator,
close_round) against FedBuff (Nguyen et al. 2022, arXiv:2106.06639; fedlm.server.buffered:
accept_stale with a staleness weight, a server step every K updates), each pass from a fresh
state, the two paths interleaved repetition by repetition in alternating order so that drift
of the machine falls on both. Only the pure server functions run: the figure is the policy's
own cost, not the simulation's.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from fedlm.config import LoraSettings, SimulationSettings, StrategySettings
from fedlm.core.rng import make_rng
from fedlm.core.types import Update
from fedlm.core.vectors import make_spec
from fedlm.server.buffered import Aggregation, BufferedState, BufferPolicy, accept_stale, new_buffer
from fedlm.server.rounds import ServerState, accept_update, close_round, initial_state, make_tasks, open_round
from fedlm.sim.cohort import ClientJob, Executor, Trainer, make_jobs
from fedlm.sim.engine import fold_cohort
from fedlm.sim.executors import make_executor
from fedlm.sim.rss import RssSampler, lifetime_peak_bytes
from fedlm.sim.threads import single_thread_blas
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


SYNTHETIC_METRICS = {"train_loss": 2.5, "tokens": 512.0}  # what a client reports besides its vector (numbers only)


@dataclass(frozen=True)
class SyntheticFleet:
    """N clients' updates (rows of one [N, P] float32 array), sample counts and the staleness each arrives with."""

    clients: tuple[str, ...]
    vectors: np.ndarray = field(repr=False)
    samples: tuple[int, ...]
    staleness: tuple[int, ...]  # seeded, uniform over 0..max_staleness


def make_synthetic_fleet(clients: int, params: int, max_staleness: int, seed: int = 0) -> SyntheticFleet:
    """Seeded synthetic updates: small normal values, 1..64 samples each, staleness uniform in [0, max_staleness]."""
    vectors = make_rng(seed, "bench-updates").standard_normal((clients, params), dtype=np.float32)
    vectors *= np.float32(1e-3)
    samples = make_rng(seed, "bench-samples").integers(1, 65, clients)
    staleness = make_rng(seed, "bench-staleness").integers(0, max_staleness + 1, clients)
    names = tuple(f"client-{i:07d}" for i in range(clients))
    return SyntheticFleet(names, vectors, tuple(int(n) for n in samples), tuple(int(s) for s in staleness))


def sync_updates(fleet: SyntheticFleet, state: ServerState) -> list[Update]:
    """The fleet's updates as answers to the round that `state` opens next (every one from its version)."""
    return [Update(state.rounds_done + 1, state.version, who, n, vector, SYNTHETIC_METRICS)
            for who, n, vector in zip(fleet.clients, fleet.samples, fleet.vectors, strict=True)]


def fedbuff_updates(fleet: SyntheticFleet, state: ServerState, buffer_size: int) -> list[Update]:
    """The fleet's updates in arrival order, each started `staleness` versions before the buffer's version then.

    Every update is accepted, so the server makes a version every `buffer_size` arrivals: the
    i-th arrives at version state.version + i // K. `state.version` must be >= the largest staleness.
    """
    updates = []
    for i, (who, n, vector, stale) in enumerate(zip(fleet.clients, fleet.samples, fleet.vectors, fleet.staleness,
                                                    strict=True)):
        started = state.version + i // buffer_size - stale
        updates.append(Update(started + 1, started, who, n, vector, SYNTHETIC_METRICS))
    return updates


@dataclass(frozen=True)
class Elapsed:
    """One pass's seconds on two clocks."""

    wall: float  # time.perf_counter
    cpu: float  # time.process_time: this process's CPU only, so other jobs on a shared machine barely move it


def elapsed_since(wall: float, cpu: float) -> Elapsed:
    return Elapsed(time.perf_counter() - wall, time.process_time() - cpu)


def sync_pass(start: ServerState, pipeline: Pipeline, updates: list[Update]) -> tuple[Elapsed, ServerState, int]:
    """Today's synchronous fold (open_round, accept_update each, close_round): its time, the new state, the folds."""
    cohort = tuple(update.client_id for update in updates)
    wall, cpu = time.perf_counter(), time.process_time()
    rnd = open_round(start, cohort, pipeline)
    for update in updates:
        accept_update(rnd, update)
    state, outcome = close_round(start, rnd)
    return elapsed_since(wall, cpu), state, len(outcome.accepted)


def fedbuff_pass(
    start: ServerState, pipeline: Pipeline, policy: BufferPolicy, updates: list[Update]
) -> tuple[Elapsed, BufferedState, list[Aggregation]]:
    """FedBuff's fold (accept_stale each, a step every K) from an empty buffer over `start`: time, buffer, steps."""
    buffer = new_buffer(start, pipeline, policy)  # once per run in FedBuff, so outside the timing
    steps: list[Aggregation] = []
    wall, cpu = time.perf_counter(), time.process_time()
    for update in updates:
        step = accept_stale(buffer, update)
        if step is not None:
            steps.append(step)
    return elapsed_since(wall, cpu), buffer, steps


@dataclass(frozen=True)
class PolicyBenchResult:
    """Microseconds per update: a pass's time / N, median over the measured passes. Ratios are fedbuff / sync."""

    policy: str  # "fedbuff" or "both"
    clients: int
    params: int
    repetitions: int  # measured passes of N updates per path, after one warm-up pass each
    buffer_size: int  # K
    max_staleness: int
    staleness_weight: str
    mean_staleness: float  # over the synthetic updates
    fedbuff_us_per_update: float  # wall clock
    fedbuff_us_per_update_min: float
    fedbuff_cpu_us_per_update: float  # this process's CPU time
    fedbuff_server_steps: int  # per pass: N // K
    fedbuff_updates_folded: int  # per pass, stepped or still buffered
    sync_us_per_update: float | None  # the sync fields and the ratios are None with policy "fedbuff"
    sync_us_per_update_min: float | None
    sync_cpu_us_per_update: float | None
    sync_server_steps: int | None  # per pass: 1 (close_round)
    sync_updates_folded: int | None
    ratio: float | None  # of the wall-clock medians
    ratio_low: float | None  # lowest and highest paired ratio (the two passes of one repetition): the noise
    ratio_high: float | None
    cpu_ratio: float | None  # of the CPU-time medians, and their paired range
    cpu_ratio_low: float | None
    cpu_ratio_high: float | None
    # the noise floor: the sync path measured a second time in the same repetitions (sync again / sync), CPU time
    control_cpu_ratio: float | None
    control_cpu_ratio_low: float | None
    control_cpu_ratio_high: float | None
    floor_us_per_update: float  # baseline, same run: numpy reading and writing one vector of P, nothing else

    def as_dict(self) -> dict[str, float | int | str | None]:
        return {**asdict(self), "within_noise": within_noise(self)}


@dataclass
class PassTimes:
    """Each path's pass times in the order run (warm-up first), and what its last pass did."""

    sync: list[Elapsed] = field(default_factory=list)
    fedbuff: list[Elapsed] = field(default_factory=list)
    control: list[Elapsed] = field(default_factory=list)  # the sync path again: an A/A comparison
    sync_folded: int | None = None
    sync_steps: int | None = None
    fedbuff_folded: int = 0
    fedbuff_steps: int = 0


def interleave_passes(
    fleet: SyntheticFleet, pipeline: Pipeline, policy: BufferPolicy, start: ServerState, *, repetitions: int,
    compare_sync: bool,
) -> PassTimes:
    """One warm-up pass and `repetitions` measured ones per path, rotating which path goes first.

    With `compare_sync` the synchronous path runs twice per repetition ("sync" and "control"), so the
    ratio of the same code to itself shows how far apart two measurements of equal cost fall."""
    buffered_start = replace(start, version=policy.max_staleness)  # old enough for every drawn staleness
    plain, stale = sync_updates(fleet, start), fedbuff_updates(fleet, buffered_start, policy.buffer_size)
    times = PassTimes()
    with single_thread_blas():  # as the engines fold: one BLAS thread
        paths = ("sync", "fedbuff", "control") if compare_sync else ("fedbuff",)
        for rep in range(repetitions + 1):
            for path in paths[rep % len(paths):] + paths[:rep % len(paths)]:
                if path in ("sync", "control"):
                    elapsed, state, folded = sync_pass(start, pipeline, plain)
                    getattr(times, path).append(elapsed)
                    times.sync_folded, times.sync_steps = folded, state.version - start.version
                elif path == "fedbuff":
                    elapsed, buffer, steps = fedbuff_pass(buffered_start, pipeline, policy, stale)
                    times.fedbuff.append(elapsed)
                    times.fedbuff_folded = sum(len(step.clients) for step in steps) + buffer.buffered
                    times.fedbuff_steps = len(steps)
    return times


@dataclass(frozen=True)
class PathFigures:
    """One path's measured passes (warm-up left out) as microseconds per update."""

    wall: list[float]
    cpu: list[float]

    @classmethod
    def of(cls, passes: list[Elapsed], clients: int) -> PathFigures:
        measured = passes[1:]
        return cls([p.wall / clients * 1e6 for p in measured], [p.cpu / clients * 1e6 for p in measured])


def ratio_fields(fedbuff: PathFigures, sync: PathFigures) -> dict[str, float]:
    """fedbuff / sync of the medians, and the lowest and highest ratio within one repetition, on both clocks."""
    fields: dict[str, float] = {}
    for clock, prefix in (("wall", ""), ("cpu", "cpu_")):
        ours, theirs = getattr(fedbuff, clock), getattr(sync, clock)
        paired = [f / s for f, s in zip(ours, theirs, strict=True)]
        fields[f"{prefix}ratio"] = statistics.median(ours) / statistics.median(theirs)
        fields[f"{prefix}ratio_low"], fields[f"{prefix}ratio_high"] = min(paired), max(paired)
    return fields


def control_fields(control: PathFigures, sync: PathFigures) -> dict[str, float]:
    """The A/A ratio on CPU time: the sync path's second measurement over its first, median and paired range."""
    paired = [c / s for c, s in zip(control.cpu, sync.cpu, strict=True)]
    return {"control_cpu_ratio": statistics.median(control.cpu) / statistics.median(sync.cpu),
            "control_cpu_ratio_low": min(paired), "control_cpu_ratio_high": max(paired)}


def within_noise(result: PolicyBenchResult) -> bool | None:
    """Whether FedBuff's CPU ratio to sync lies inside the A/A band (the same path measured twice); None without sync."""
    if result.cpu_ratio is None or result.control_cpu_ratio_low is None:
        return None
    low = min(result.control_cpu_ratio_low, 1 / result.control_cpu_ratio_high)  # the band is symmetric about 1
    high = max(result.control_cpu_ratio_high, 1 / result.control_cpu_ratio_low)
    return low <= result.cpu_ratio <= high


def bench_policies(
    *, clients: int, params: int, repetitions: int, policy: BufferPolicy, compare_sync: bool = True, seed: int = 0
) -> PolicyBenchResult:
    """Per-update server cost of FedBuff (and of the synchronous fold, interleaved) on the same synthetic updates."""
    if clients < 1 or params < 1 or repetitions < 1:
        raise ValueError("clients, params and repetitions must each be >= 1")
    if policy.buffer_size > clients:
        raise ValueError(f"buffer size K = {policy.buffer_size} is larger than N = {clients} clients: a pass of N "
                         "updates would never step the server")
    pipeline = bench_pipeline(params)
    fleet = make_synthetic_fleet(clients, params, policy.max_staleness, seed)
    start = initial_state(make_rng(seed, "bench-global").standard_normal(params, dtype=np.float32), pipeline)
    times = interleave_passes(fleet, pipeline, policy, start, repetitions=repetitions, compare_sync=compare_sync)
    fedbuff = PathFigures.of(times.fedbuff, clients)
    sync = PathFigures.of(times.sync, clients) if compare_sync else None
    none = dict.fromkeys(("ratio", "ratio_low", "ratio_high", "cpu_ratio", "cpu_ratio_low", "cpu_ratio_high",
                          "control_cpu_ratio", "control_cpu_ratio_low", "control_cpu_ratio_high"))
    return PolicyBenchResult(
        policy="both" if compare_sync else "fedbuff", clients=clients, params=params, repetitions=repetitions,
        buffer_size=policy.buffer_size, max_staleness=policy.max_staleness, staleness_weight=policy.staleness_weight,
        mean_staleness=float(np.mean(fleet.staleness)),
        fedbuff_us_per_update=statistics.median(fedbuff.wall), fedbuff_us_per_update_min=min(fedbuff.wall),
        fedbuff_cpu_us_per_update=statistics.median(fedbuff.cpu),
        fedbuff_server_steps=times.fedbuff_steps, fedbuff_updates_folded=times.fedbuff_folded,
        sync_us_per_update=statistics.median(sync.wall) if sync else None,
        sync_us_per_update_min=min(sync.wall) if sync else None,
        sync_cpu_us_per_update=statistics.median(sync.cpu) if sync else None,
        sync_server_steps=times.sync_steps, sync_updates_folded=times.sync_folded,
        **(ratio_fields(fedbuff, sync) | control_fields(PathFigures.of(times.control, clients), sync) if sync else none),
        floor_us_per_update=memory_floor(clients, params) / clients * 1e6,
    )
