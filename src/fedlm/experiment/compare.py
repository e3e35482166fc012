"""Run every method of the comparison on one loaded model and collect the results.

The question a user asks before choosing federated learning: how much quality does giving
up central training cost? Every trained method gets the same number of training
sequences; all start from the same seeded adapter on the same base model and are scored
on the same slices. Rows: the base model; centralized LoRA on the union of the training
clients' text; local-only (each client alone); FedAvg (McMahan et al. 2017,
arXiv:1602.05629); FedAdam or FedYogi (Reddi et al. 2021, arXiv:2003.00295); user-level
DP-FedAvg (McMahan et al. 2018, arXiv:1710.06963) with the noise calibrated to the
epsilon target by the accountant; FedAvg with 8-bit stochastically quantized updates.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from fedlm.config import CompressionSettings, PrivacySettings, RunConfig, SecAggSettings, StrategySettings, apply_overrides
from fedlm.core.rng import make_rng
from fedlm.eval.slices import own_test_blocks
from fedlm.experiment.methods import Bench, Log, MethodResult, run_base, run_centralized, run_federated, run_local_only
from fedlm.experiment.report import results_dict
from fedlm.experiment.settings import Budget, ExperimentSettings, make_budget
from fedlm.privacy.calibrate import calibrate_noise
from fedlm.privacy.plan import default_delta
from fedlm.sim.setup import Simulation, prepare


def plain_config(config: RunConfig) -> RunConfig:
    """The run's model, LoRA, data, client and eval settings with plain FedAvg's server side (no DP, compression, SecAgg).

    Evaluation is always by held-out clients: the comparison's "held-out" slice must be clients that
    never trained (per-site evaluation would score the training sites there).
    """
    return dataclasses.replace(config, strategy=StrategySettings(), privacy=PrivacySettings(), compression=CompressionSettings(),
                               secagg=SecAggSettings(), eval=dataclasses.replace(config.eval, mode="held_out"))


def fedavg_config(config: RunConfig, settings: ExperimentSettings) -> RunConfig:
    return apply_overrides(plain_config(config), {
        "federation": {"rounds": settings.rounds, "clients_per_round": settings.clients_per_round, "sampling": "fixed"},
        "client": {"local_steps": settings.local_steps},
    })


def adaptive_config(config: RunConfig, settings: ExperimentSettings) -> RunConfig:
    return apply_overrides(fedavg_config(config, settings), {"strategy": {
        "server_optimizer": settings.adaptive_optimizer, "server_lr": settings.adaptive_lr, "server_tau": settings.adaptive_tau,
    }})


def quantized_config(config: RunConfig, settings: ExperimentSettings) -> RunConfig:
    return apply_overrides(fedavg_config(config, settings), {"compression": {"quantize_bits": settings.quantize_bits}})


def dp_noise_multiplier(settings: ExperimentSettings) -> float:
    """The least z that keeps dp_rounds Poisson rounds within the epsilon target at delta = 1/M^1.1."""
    return calibrate_noise(
        target_epsilon=settings.dp_target_epsilon, sample_rate=settings.dp_sample_rate, rounds=settings.dp_rounds,
        delta=default_delta(settings.train_clients), accountant=settings.dp_accountant,
    )


def dp_config(config: RunConfig, settings: ExperimentSettings) -> RunConfig:
    return apply_overrides(plain_config(config), {
        "federation": {"rounds": settings.dp_rounds, "sampling": "poisson", "sample_rate": settings.dp_sample_rate},
        "client": {"local_steps": settings.dp_local_steps, "batch_size": settings.dp_batch_size},
        "strategy": {"clip_norm": settings.dp_clip_norm, "weighting": "uniform", "server_lr": settings.dp_server_lr},
        "privacy": {"noise_multiplier": dp_noise_multiplier(settings), "accountant": settings.dp_accountant,
                    "target_epsilon": settings.dp_target_epsilon},
    })


def federated_configs(config: RunConfig, settings: ExperimentSettings) -> dict[str, RunConfig]:
    """Every federated row's run config, built (and so checked) before the model loads."""
    adaptive = "fedadam" if settings.adaptive_optimizer == "adam" else "fedyogi"
    return {
        "fedavg": fedavg_config(config, settings),
        adaptive: adaptive_config(config, settings),
        "fedavg_dp": dp_config(config, settings),
        f"fedavg_{settings.quantize_bits}bit": quantized_config(config, settings),
    }


def choose_training_clients(sim: Simulation, count: int, seed: int) -> tuple[str, ...]:
    """A seeded sample of `count` speakers from those that are not held out and have training text."""
    candidates = [c for c in sim.population if sim.dataset.get(c).train]
    if count > len(candidates):
        raise ValueError(f"experiment.train_clients = {count} exceeds the {len(candidates)} clients with training text "
                         "that are not held out")
    pick = make_rng(seed, "experiment-train-clients").choice(len(candidates), size=count, replace=False)
    return tuple(sorted(candidates[i] for i in pick))


def make_bench(config: RunConfig, settings: ExperimentSettings, budget: Budget) -> Bench:
    """Load the data and the base model once, with a fresh adapter, and cut the evaluation slices."""
    sim = prepare(plain_config(config))
    clients = choose_training_clients(sim, settings.train_clients, config.run.seed)
    own = own_test_blocks(sim.work, sim.base.tokenizer, sim.dataset, clients, max_sequences=settings.own_max_sequences)
    questions = sim.work.questions(sim.base.tokenizer, {c: sim.dataset.get(c).test for c in clients})
    return Bench(sim, clients, sim.eval_set, own, questions, budget)


def check_skip(settings: ExperimentSettings, names: list[str]) -> None:
    unknown = sorted(set(settings.skip) - set(names))
    if unknown:
        raise ValueError(f"experiment.skip names {unknown}; the rows are {names}")


def run_comparison(
    config: RunConfig, settings: ExperimentSettings, log: Log | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and score every method; returns everything report.py writes.

    `on_progress` sees the results so far after each row past centralized, so that a long
    run that is stopped still leaves what it measured.
    """
    log = log or (lambda message: None)
    started = time.perf_counter()
    budget = make_budget(settings, config)
    configs = federated_configs(config, settings)
    check_skip(settings, ["base", "centralized", "local_only", *configs])
    bench = make_bench(config, settings, budget)
    log(f"loaded {config.model.name}: {len(bench.clients)} training clients, {len(bench.sim.eval_clients)} held-out "
        f"speakers; budget {budget.tokens:,} training tokens per method")
    runs: list[tuple[str, Callable[[], MethodResult]]] = [
        ("base", lambda: run_base(bench)),
        ("centralized", lambda: run_centralized(bench)),
        ("local_only", lambda: run_local_only(bench)),
    ]
    runs += [(name, lambda name=name, c=c: run_federated(bench, name, c, log)) for name, c in configs.items()]
    results = []
    for name, run in ((n, r) for n, r in runs if n not in settings.skip):
        log(f"{name} ...")
        result = run()
        results.append(result)
        held_out = result.slices["held_out"]
        choice = f", multiple choice {held_out.choice_accuracy:.3f}" if held_out.choice.questions else ""
        log(f"{name}: held-out perplexity {held_out.perplexity:.2f}{choice} ({result.seconds:.0f} s)")
        if on_progress is not None and len(results) >= 2:
            on_progress(results_dict(bench, settings, results, time.perf_counter() - started))
    return results_dict(bench, settings, results, time.perf_counter() - started)
