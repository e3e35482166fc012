"""`fedlm experiment fleet`: synchronous, quorum + deadline and FedBuff rounds on a fleet with slow clients.

The question a cross-device operator asks: when a share of the devices is slow, how long
(in the fleet's time, not this machine's) does each aggregation policy take to reach a
target held-out perplexity? Every policy trains the same base model and adapter over the
same training clients and folds the same number of client updates (equal training tokens),
on the simulation's virtual clock (fedlm.sim.virtual_clock: a log-normal step time per task,
`slow_share` of the clients `slow_factor` times slower, a seeded choice fixed for the run):

- sync: each round waits for its whole cohort of `clients_per_round`, so one slow member
  holds it up;
- quorum: each round closes at its `quorum`-th arrival and drops the stragglers (Bonawitz et
  al. 2019, arXiv:1902.01046); as many more rounds as it folds fewer updates a round;
- fedbuff: `clients_per_round` clients train at once and the server steps every
  `buffer_size` updates, each weighted by 1/sqrt(1 + staleness) (Nguyen et al. 2022,
  arXiv:2106.06639); a slow client's update arrives late and counts within `max_staleness`.

Each policy's held-out perplexity is measured after every round or step, against the
simulated seconds at that point; the target is a perplexity every policy reaches (by
default the highest final perplexity among them), and the answer is each policy's
simulated time to it. Real (wall) seconds are reported beside, since training is the same
work whatever the policy.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fedlm.config import RunConfig, apply_overrides
from fedlm.experiment.compare import choose_training_clients, plain_config
from fedlm.experiment.methods import RoundLog, federated_simulation, reset_adapter
from fedlm.experiment.fleet_settings import FleetSettings, Log, require
from fedlm.sim.async_engine import simulate_fedbuff
from fedlm.sim.engine import simulate
from fedlm.sim.setup import Simulation, prepare

def policy_configs(config: RunConfig, settings: FleetSettings) -> dict[str, RunConfig]:
    """Each policy's run config, folding `settings.updates` updates; refuses a budget a policy cannot split."""
    clock = {"slow_share": settings.slow_share, "slow_factor": settings.slow_factor,
             "compute_sigma": settings.compute_sigma}
    base = apply_overrides(plain_config(config), {
        "federation": {"clients_per_round": settings.clients_per_round, "sampling": "fixed"},
        "client": {"local_steps": settings.local_steps}, "monitoring": {"enabled": False}})
    quorum, buffer = settings.resolved_quorum, settings.resolved_buffer
    for key, size in (("quorum", quorum), ("buffer_size", buffer)):
        require(settings.updates % size == 0, key,
                f"{size} must divide the budget of {settings.updates} updates (rounds x clients_per_round)")
    tables = {
        "sync": ({"kind": "sync", **clock}, settings.rounds),
        "quorum": ({"kind": "quorum", "quorum": quorum, **clock}, settings.updates // quorum),
        "fedbuff": ({"kind": "fedbuff", "buffer_size": buffer, "concurrency": settings.clients_per_round,
                     "max_staleness": settings.resolved_staleness, **clock}, settings.updates // buffer),
    }
    return {name: apply_overrides(base, {"policy": table, "federation": {"rounds": rounds}})
            for name, (table, rounds) in tables.items() if name in settings.policies}


def run_policy(sim: Simulation, clients: tuple[str, ...], name: str, config: RunConfig, log: Log) -> dict[str, Any]:
    """One policy from the initial adapter: its curve of held-out perplexity against simulated seconds."""
    started = time.perf_counter()
    policy_sim = federated_simulation(sim, config, clients)
    reset_adapter(policy_sim.adapter)
    engine = simulate_fedbuff if config.policy.kind == "fedbuff" else simulate
    result = engine(policy_sim, RoundLog(name, log))
    curve = [{"version": r["version"], "sim_seconds": r["sim_seconds"], "accepted": r["accepted"],
              "loss": r["eval"]["loss"], "perplexity": r["eval"]["perplexity"]} for r in result.records if "eval" in r]
    folded = sum(r["accepted"] for r in result.records)
    return {"policy": name, "steps": len(result.records), "updates_folded": folded,
            "late_or_refused": sum(r.get("late", r.get("refused", 0)) for r in result.records),
            "final_perplexity": result.final_eval.perplexity, "final_loss": result.final_eval.loss,
            "sim_seconds": result.records[-1]["sim_seconds"] if result.records else 0.0,
            "wall_seconds": time.perf_counter() - started, "curve": curve}


def seconds_to(curve: list[dict[str, Any]], target: float) -> float | None:
    """The simulated seconds at the first evaluation at or below `target` perplexity; None if never."""
    return next((point["sim_seconds"] for point in curve if point["perplexity"] <= target), None)


def run_fleet(config: RunConfig, settings: FleetSettings, log: Log | None = None) -> dict[str, Any]:
    """Every policy on one loaded model; returns what fleet_report writes."""
    log = log or (lambda message: None)
    started = time.perf_counter()
    configs = policy_configs(config, settings)
    sim = prepare(plain_config(config))
    clients = choose_training_clients(sim, settings.train_clients, config.run.seed)
    log(f"loaded {config.model.name}: a fleet of {len(clients)} training clients ({settings.slow_share:.0%} slow, "
        f"x{settings.slow_factor:g}), {settings.updates} updates of {settings.local_steps} steps per policy")
    reset_adapter(sim.adapter)
    base = sim.evaluate()
    rows = []
    for name, policy_config in configs.items():
        log(f"{name} ...")
        rows.append(run_policy(sim, clients, name, policy_config, log))
        log(f"{name}: held-out perplexity {rows[-1]['final_perplexity']:.2f} after {rows[-1]['sim_seconds']:.0f} "
            f"simulated s ({rows[-1]['wall_seconds']:.0f} s)")
    target = settings.target_perplexity or max(row["final_perplexity"] for row in rows)
    for row in rows:
        row["sim_seconds_to_target"] = seconds_to(row["curve"], target)
    return {"model": config.model.name, "settings": dataclasses.asdict(settings),
            "resolved": {"quorum": settings.resolved_quorum, "buffer_size": settings.resolved_buffer,
                         "max_staleness": settings.resolved_staleness},
            "training_tokens_per_policy": settings.updates * settings.local_steps * config.client.batch_size
            * config.data.seq_len,
            "base_perplexity": base.perplexity, "target_perplexity": target, "policies": rows,
            "wall_seconds": time.perf_counter() - started}
