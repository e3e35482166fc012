"""How much of the centralized gain user-level DP keeps on the plays, per design, adapter and epsilon.

The designs (fedlm.privacy.design has the accounting and the predicted signal-to-noise ratio):
- "full": every training speaker in one round; z = sqrt(T) / mu from the closed-form Gaussian-DP
  conversion (Dong, Roth, Su 2019, arXiv:1905.02383), checked by dp-accounting's PLD accountant.
- "poisson": DP-FedAvg (McMahan et al. 2018, arXiv:1710.06963), each speaker with probability q
  per round; z calibrated by the PLD accountant.
- "banded_mf": banded matrix-factorization DP-FTRL (Choquette-Choo et al. 2023, arXiv:2306.08153)
  over cyclic groups; the whole run one Gaussian mechanism of mu = 1 / sigma.
Each with LoRA ("fedit": A and B travel) and FFA-LoRA (Sun et al. 2024, arXiv:2403.12313: B only),
at each epsilon, delta = 1 / N^1.1. Every row runs the ordinary simulation engine (fedlm.sim.engine);
the clip norm is a quantile of update norms measured on public data: held-out speakers' training
text, trained from the initial adapter, never part of the training population. The reference rows
are the base model, centralized LoRA (one optimizer on the union of the speakers' text, `fedlm
experiment compare`'s budget) and each design's non-private run (the same clipping, no noise).

One training pass serves every first round: a client's round-1 update starts from the initial
adapter whatever the design or the noise, so it is trained once and reused (RoundOneUpdates);
rounds after the first start from a noised global and are trained afresh. A test checks that a
reused row equals a run trained from scratch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fedlm.client.train import run_task
from fedlm.config import RunConfig, apply_overrides
from fedlm.core.types import Task, Update
from fedlm.data.blocks import concat_blocks
from fedlm.experiment.compare import plain_config
from fedlm.experiment.dp_settings import DPSettings
from fedlm.experiment.methods import RoundLog, federated_simulation, reset_adapter, train_centralized
from fedlm.privacy import banded
from fedlm.privacy.calibrate import calibrate_noise
from fedlm.privacy.design import gaussian_dp_mu
from fedlm.privacy.plan import default_delta, make_privacy_plan
from fedlm.sim.cohort import ClientJob, SerialExecutor, Trainer
from fedlm.sim.engine import simulate
from fedlm.sim.setup import Simulation, prepare
from fedlm.updates.client import make_encoder

Log = Callable[[str], None]


def adapter_config(config: RunConfig, settings: DPSettings, adapter: str) -> RunConfig:
    """The run's model and data, plain FedAvg's server side, `adapter`'s LoRA mode and the client work of [dp]."""
    return apply_overrides(plain_config(config), {
        "lora": {"aggregation": adapter},
        "client": {"local_steps": settings.local_steps, "batch_size": settings.batch_size, "lr": settings.lr,
                   "lr_schedule": "constant", "warmup_steps": 0, "min_lr_ratio": 0.0},
    })


class RoundOneUpdates:
    """Every client's raw round-1 delta from the initial adapter, trained once and reused by every row.

    A trainer (sim.cohort.Trainer) per row: a round-1 job on the initial global takes the kept delta, any
    other job trains; either way the row's own client steps (clipping) then run on the copy in `out`.
    """

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.kept: dict[str, tuple[np.ndarray, int, dict[str, float]]] = {}
        self.trained = self.reused = 0

    def trainer(self, row: Simulation) -> Trainer:
        encode = make_encoder(row.pipeline, seed=row.config.run.seed)
        initial = self.sim.adapter.initial_shared

        def train(job: ClientJob, global_vector: np.ndarray, out: np.ndarray) -> Update:
            task = job.task
            first = task.round == 1 and np.array_equal(global_vector, initial)
            if first and task.client_id in self.kept:
                raw, samples, metrics = self.kept[task.client_id]
                np.copyto(out, raw)
                update = Update(task.round, task.version, task.client_id, samples, out, dict(metrics))
                self.reused += 1
            else:
                update = run_task(
                    self.sim.adapter, task, global_vector=global_vector, private_vector=job.private,
                    train_blocks=self.sim.train_blocks(task.client_id), settings=row.config.client,
                    seed=row.config.run.seed, out=out, loss_fn=self.sim.work.loss, rounds=row.config.federation.rounds,
                )
                self.trained += 1
                if first:
                    self.kept[task.client_id] = (out.copy(), update.num_samples, dict(update.metrics))
            update.metrics.update(encode(out, task, job.residual))
            return update

        return train


def training_clients(sim: Simulation, settings: DPSettings) -> tuple[str, ...]:
    """Every speaker that is not held out and has training text (or a seeded sample of dp.train_clients)."""
    clients = tuple(c for c in sim.population if sim.dataset.get(c).train)
    if settings.train_clients:
        if settings.train_clients > len(clients):
            raise ValueError(f"dp.train_clients = {settings.train_clients} exceeds the {len(clients)} speakers with "
                             "training text that are not held out")
        pick = np.random.default_rng(sim.config.run.seed).choice(len(clients), settings.train_clients, replace=False)
        clients = tuple(sorted(clients[i] for i in pick))
    return clients


def public_clip_norm(sim: Simulation, settings: DPSettings) -> dict[str, Any]:
    """The clip norm from public data: the dp.clip_quantile of the update norms of dp.public_clients held-out
    speakers, each trained from the initial adapter on its training text with the rows' client settings."""
    public = [c for c in sim.eval_clients if sim.dataset.get(c).train][: settings.public_clients]
    if not public:
        raise ValueError("no held-out speaker has training text to measure update norms on (eval.clients)")
    out = np.empty_like(sim.adapter.initial_shared)
    norms = []
    for client in public:
        run_task(sim.adapter, Task(round=1, version=0, client_id=client), global_vector=sim.adapter.initial_shared,
                 private_vector=sim.adapter.initial_private.copy(), train_blocks=sim.train_blocks(client),
                 settings=sim.config.client, seed=sim.config.run.seed, out=out, loss_fn=sim.work.loss, rounds=1)
        norms.append(float(np.linalg.norm(out)))
    clip = float(np.quantile(norms, settings.clip_quantile))
    share = float(np.mean(np.minimum(norms, clip)) / clip)  # rho: a clipped update's norm as a share of the clip norm
    return {"clip_norm": clip, "public_clients": len(public), "norm_quantiles": [float(q) for q in
            np.quantile(norms, [0.1, 0.5, 0.9])], "update_norm_share": share}


def gdp_noise(epsilon: float, delta: float) -> float:
    """1 / mu for the mu-GDP that is (epsilon, delta)-DP, raised by 1e-6 so that the PLD accountant's epsilon (which
    agrees with the closed form to about 1e-8) stays within the target."""
    return (1 + 1e-6) / gaussian_dp_mu(epsilon, delta)


@functools.lru_cache(maxsize=64)
def poisson_noise(epsilon: float, rate: float, rounds: int, delta: float) -> float:
    """The least z within epsilon for Poisson rounds (PLD; seconds each, so computed once per adapter pair)."""
    return calibrate_noise(target_epsilon=epsilon, sample_rate=rate, rounds=rounds, delta=delta, accountant="pld")


def design_overrides(settings: DPSettings, design: str, epsilon: float | None, clients: int) -> dict[str, Any]:
    """The [federation] and [privacy] of one row; epsilon None is the design without noise."""
    delta = default_delta(clients)
    if design == "full":
        federation = {"rounds": 1, "sampling": "poisson", "sample_rate": 1.0}
        z = None if epsilon is None else gdp_noise(epsilon, delta)  # T = 1: z = sqrt(T) / mu
        privacy = {} if z is None else {"noise_multiplier": z}
    elif design == "poisson":
        federation = {"rounds": settings.poisson_rounds, "sampling": "poisson", "sample_rate": settings.poisson_rate}
        privacy = {} if epsilon is None else {
            "noise_multiplier": poisson_noise(epsilon, settings.poisson_rate, settings.poisson_rounds, delta)}
    else:
        federation = {"rounds": settings.mf_rounds, "sampling": "cyclic", "groups": settings.mf_groups}
        privacy = {} if epsilon is None else {"noise_multiplier": gdp_noise(epsilon, delta),
                                              "mechanism": "banded_mf", "bands": settings.mf_bands}
    if privacy:
        privacy |= {"accountant": "pld", "target_epsilon": epsilon}
    return {"federation": federation, "privacy": privacy}


def row_config(base: RunConfig, settings: DPSettings, design: str, epsilon: float | None, clients: int, clip: float,
               noise_aware: bool = False) -> RunConfig:
    overrides = design_overrides(settings, design, epsilon, clients)
    if noise_aware:
        overrides["privacy"]["noise_aware_lr"] = True
    overrides["strategy"] = {"clip_norm": clip, "weighting": "uniform", "server_lr": settings.server_lr}
    return apply_overrides(base, overrides)


def predicted_snr(config: RunConfig, clients: int, clip: float, share: float, size: int) -> float | None:
    """rho C over the expected noise norm on one round's mean: `fedlm privacy plan`'s per-round SNR
    (fedlm.privacy.design). Banded MF counts its per-round std as the independent std with the same total
    squared error on the T models, sqrt(||A C^-1||^2 / ||A||^2) s sigma C / K."""
    plan = make_privacy_plan(config.privacy, config.federation, clients)
    if plan is None:
        return None
    std = plan.sum_noise_multiplier * clip / plan.expected_cohort
    if plan.correlated:
        rounds = config.federation.rounds
        std *= math.sqrt(banded.prefix_sum_error(np.array(plan.coefficients), rounds) / banded.independent_error(rounds))
    return share * clip / (std * math.sqrt(size))


def centralized_reference(sim: Simulation, clients: tuple[str, ...], settings: DPSettings) -> dict[str, Any]:
    """One optimizer on the union of the training speakers' text (`fedlm experiment compare`'s centralized row)."""
    started = time.perf_counter()
    union = concat_blocks([sim.train_blocks(c) for c in clients], sim.config.data.seq_len)
    client = dataclasses.replace(sim.config.client, local_steps=settings.centralized_steps,
                                 batch_size=settings.centralized_batch)
    train_centralized(sim.adapter, union, client, seed=sim.config.run.seed, loss_fn=sim.work.loss)
    result = sim.evaluate()
    reset_adapter(sim.adapter)
    tokens = settings.centralized_steps * settings.centralized_batch * sim.config.data.seq_len
    return {"loss": result.loss, "perplexity": result.perplexity, "tokens": tokens, "seconds": time.perf_counter() - started}


class RowLog(RoundLog):
    """RoundLog, and a line every `every` clients of a round: a 722-client round takes half an hour."""

    def __init__(self, name: str, log: Log, every: int = 100) -> None:
        super().__init__(name, log)
        self.every = every

    def client_done(self, round: int, index: int) -> None:
        if (index + 1) % self.every == 0:
            self.log(f"  {self.name} round {round}: {index + 1} clients")


def run_row(sim: Simulation, updates: RoundOneUpdates, config: RunConfig, clients: tuple[str, ...], name: str,
            log: Log) -> tuple[dict[str, Any], float]:
    """One row through the simulation engine; (its figures, wall seconds)."""
    started = time.perf_counter()
    row = federated_simulation(sim, config, clients)
    reset_adapter(sim.adapter)
    trained_before = updates.trained
    result = simulate(row, RowLog(name, log), executor=SerialExecutor(updates.trainer(row), sim.adapter.shared_spec.size))
    if not result.records:
        raise ValueError(f"{name}: no round ran ({result.stop_reason})")
    last = result.records[-1]
    figures = {
        "loss": result.final_eval.loss, "perplexity": result.final_eval.perplexity, "rounds": len(result.records),
        "client_updates": sum(r["accepted"] for r in result.records), "trained_now": updates.trained - trained_before,
        "epsilon": last.get("epsilon"), "delta": last.get("delta"), "noise_multiplier": last.get("noise_multiplier"),
        "sum_noise_multiplier": row.pipeline.privacy.sum_noise_multiplier if row.pipeline.privacy else None,
        "noise_norm": [r.get("noise_norm") for r in result.records],
        "measured_snr": [r.get("signal_to_noise") for r in result.records],
        "server_lr_scale": [r["server_lr_scale"] for r in result.records if "server_lr_scale" in r] or None,
        "stop_reason": result.stop_reason,
    }
    return figures, time.perf_counter() - started


def row_cells(settings: DPSettings, adapter: str) -> list[tuple[str, float | None, bool]]:
    """(design, epsilon or None for no noise, noise-aware lr) of every row for one adapter, non-private first."""
    cells = [(design, None, False) for design in settings.designs]
    cells += [(design, eps, False) for design in settings.designs for eps in sorted(settings.epsilons)]
    if settings.noise_aware and adapter == "fedit" and "full" in settings.designs:
        cells += [("full", eps, True) for eps in sorted(settings.epsilons)]
    return cells


def run_dp_comparison(config: RunConfig, settings: DPSettings, log: Log | None = None,
                      on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every row's held-out loss and fraction of the centralized gain; returns what dp_report writes."""
    log = log or (lambda message: None)
    started = time.perf_counter()
    results: dict[str, Any] = {"settings": dataclasses.asdict(settings), "model": config.model.name,
                               "seed": config.run.seed, "rows": [], "adapters": {}}
    for adapter in settings.adapters:
        sim = prepare(adapter_config(config, settings, adapter))
        clients = training_clients(sim, settings)
        size = sim.adapter.shared_spec.size
        if "base" not in results:
            base = sim.evaluate()
            results["base"] = {"loss": base.loss, "perplexity": base.perplexity}
            log(f"{len(clients)} training speakers, {len(sim.eval_clients)} held out; base held-out loss "
                f"{results['base']['loss']:.4f}; centralized reference ...")
            results["centralized"] = centralized_reference(sim, clients, settings)
            log(f"centralized: held-out loss {results['centralized']['loss']:.4f} "
                f"({results['centralized']['seconds']:.0f} s)")
        public = public_clip_norm(sim, settings)
        results["adapters"][adapter] = {"params": size, "clients": len(clients), **public}
        log(f"{adapter}: P = {size:,}, clip norm {public['clip_norm']:.4f} from {public['public_clients']} public speakers")
        updates = RoundOneUpdates(sim)
        for design, epsilon, noise_aware in row_cells(settings, adapter):
            config_row = row_config(sim.config, settings, design, epsilon, len(clients), public["clip_norm"], noise_aware)
            name = f"{adapter} {design}" + (" noise-aware" if noise_aware else "") + (
                f" eps={epsilon:g}" if epsilon is not None else " no DP")
            figures, seconds = run_row(sim, updates, config_row, clients, name, log)
            row = {"adapter": adapter, "design": design, "target_epsilon": epsilon, "noise_aware_lr": noise_aware,
                   "seconds": seconds, **figures,
                   "predicted_snr": predicted_snr(config_row, len(clients), public["clip_norm"],
                                                  public["update_norm_share"], size)}
            results["rows"].append(row)
            log(f"{name}: held-out loss {row['loss']:.4f} ({seconds:.0f} s, {row['trained_now']} clients trained)")
            if on_progress is not None:
                on_progress(finish(results, started))
        del updates
    return finish(results, started)


def finish(results: dict[str, Any], started: float) -> dict[str, Any]:
    """Fractions of the centralized gain and of the same design's non-private gain, and the wall time so far."""
    base, central = results["base"]["loss"], results["centralized"]["loss"]
    if central >= base:
        raise ValueError(f"centralized training did not lower the held-out loss ({central:.4f} >= {base:.4f}): "
                         "there is no gain to keep a fraction of")
    plain = {(r["adapter"], r["design"]): r["loss"] for r in results["rows"] if r["target_epsilon"] is None}
    for row in results["rows"]:
        row["fraction_of_centralized_gain"] = (base - row["loss"]) / (base - central)
        reference = plain.get((row["adapter"], row["design"]))
        row["fraction_of_nonprivate_gain"] = None if reference is None or reference >= base else (
            (base - row["loss"]) / (base - reference))
    results["seconds"] = time.perf_counter() - started
    return results
