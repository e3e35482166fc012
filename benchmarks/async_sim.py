"""Synchronous FedAvg vs FedBuff in simulated seconds to a target held-out loss, with slow clients.

What it measures
    Two simulations of the same run (the tiny model by default, the embedded plays, one seed):
      - sync: federation.rounds rounds of a sampled cohort of --cohort clients (fedlm.sim.engine);
      - fedbuff: policy.kind = "fedbuff" (fedlm.sim.async_engine, Nguyen et al. 2022,
        arXiv:2106.06639) with buffer K = --cohort, --concurrency clients training at once,
        updates past --max-staleness refused, for as many server steps as sync has rounds, so
        both fold the same number of client updates (fedbuff also trains the refused ones and
        those still in flight at the end; both counts are printed).
    Both are timed on the same virtual clock (fedlm.sim.virtual_clock): a task takes local_steps x
    a log-normal step time (median e^mu, --sigma), --slow-factor times longer for the seeded
    --slow-share of clients that are slow. A synchronous round lasts as long as its slowest
    cohort client (`sync_round_seconds`, over the cohorts the sync run actually sampled); the
    asynchronous engine reports its own `sim_seconds` at every server step.

    The target is a held-out loss both runs reach: base - --target-fraction x (base - the
    higher of the two final losses). Printed: each run's simulated seconds to the target, the
    ratio sync / fedbuff, final losses, updates folded and trained, and the real wall time.

The baseline
    The synchronous run, on the same model, data, seed and clock, in the same process.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from dataclasses import replace
from typing import Any

from fedlm.config import RunConfig, apply_overrides, config_from_dict
from fedlm.server.policy_settings import PolicySettings
from fedlm.sim.async_engine import simulate_fedbuff
from fedlm.sim.engine import RunResult, sample_cohort, simulate
from fedlm.sim.setup import Simulation, prepare
from fedlm.sim.virtual_clock import slow_clients, sync_round_seconds

Timeline = list[tuple[float, float]]  # (simulated seconds, held-out loss) after each evaluated step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="model.name (default: the tiny random model)")
    parser.add_argument("--rounds", type=int, default=20, help="sync rounds = fedbuff server steps")
    parser.add_argument("--cohort", type=int, default=4, help="sync cohort = fedbuff buffer size K")
    parser.add_argument("--concurrency", type=int, default=8, help="fedbuff: clients training at once")
    parser.add_argument("--max-staleness", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-3, help="client.lr")
    parser.add_argument("--slow-share", type=float, default=0.2)
    parser.add_argument("--slow-factor", type=float, default=10.0)
    parser.add_argument("--sigma", type=float, default=0.5, help="log-normal spread of the step time")
    parser.add_argument("--target-fraction", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def sync_config(args: argparse.Namespace) -> RunConfig:
    return config_from_dict({
        "model": {"name": args.model},
        "run": {"seed": args.seed},
        "data": {"seq_len": 64},
        "federation": {"rounds": args.rounds, "clients_per_round": args.cohort},
        "client": {"local_steps": args.local_steps, "batch_size": 2, "lr": args.lr},
        "eval": {"clients": 4, "max_sequences": 32},
        "monitoring": {"enabled": False},
    })


def fedbuff_policy(args: argparse.Namespace) -> PolicySettings:
    return PolicySettings(kind="fedbuff", buffer_size=args.cohort, concurrency=args.concurrency,
                          max_staleness=args.max_staleness, compute_sigma=args.sigma, slow_share=args.slow_share,
                          slow_factor=args.slow_factor)


def sync_timeline(sim: Simulation, result: RunResult, clock: PolicySettings) -> Timeline:
    """Each round's end on the virtual clock (its cohort's slowest task) beside its held-out loss."""
    config = sim.config
    slow = slow_clients(sim.population, share=clock.slow_share, seed=config.run.seed)
    now, timeline = 0.0, []
    for record in result.records:
        cohort = sample_cohort(sim, record["round"])
        now += sync_round_seconds(clock, seed=config.run.seed, cohort=cohort, round=record["round"],
                                  local_steps=config.client.local_steps, slow=slow)
        timeline.append((now, record["eval"]["loss"]))
    return timeline


def fedbuff_timeline(result: RunResult) -> Timeline:
    return [(r["sim_seconds"], r["eval"]["loss"]) for r in result.records if "eval" in r]


def seconds_to(timeline: Timeline, target: float) -> float | None:
    """The first simulated time the held-out loss is at or below `target` (None: never)."""
    return next((seconds for seconds, loss in timeline if loss <= target), None)


def run_both(args: argparse.Namespace) -> dict[str, Any]:
    config = sync_config(args)
    sim = prepare(config)
    started = time.perf_counter()
    sync = simulate(sim)
    sync_wall = time.perf_counter() - started
    fedbuff_sim = replace(sim, config=apply_overrides(config, {"policy": vars(fedbuff_policy(args))}))
    started = time.perf_counter()
    fedbuff = simulate_fedbuff(fedbuff_sim)
    fedbuff_wall = time.perf_counter() - started
    timelines = {"sync": sync_timeline(sim, sync, fedbuff_sim.config.policy), "fedbuff": fedbuff_timeline(fedbuff)}
    base = sync.base_eval.loss
    worst_final = max(sync.final_eval.loss, fedbuff.final_eval.loss)
    target = base - args.target_fraction * (base - worst_final)
    trained = sum(r["dispatched"] for r in fedbuff.records)
    return {
        "base_loss": base, "target_loss": target,
        "sync": {"seconds": seconds_to(timelines["sync"], target), "final_loss": sync.final_eval.loss,
                 "end_seconds": timelines["sync"][-1][0], "folded": sum(r["accepted"] for r in sync.records),
                 "trained": sum(r["accepted"] for r in sync.records), "wall_s": sync_wall},
        "fedbuff": {"seconds": seconds_to(timelines["fedbuff"], target), "final_loss": fedbuff.final_eval.loss,
                    "end_seconds": timelines["fedbuff"][-1][0], "folded": sum(r["accepted"] for r in fedbuff.records),
                    "trained": trained, "refused": fedbuff.records[-1]["refused_total"], "wall_s": fedbuff_wall},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING)
    figures = run_both(args)
    print(f"{args.model}: {args.rounds} steps of {args.cohort} updates, {args.slow_share:.0%} of clients "
          f"{args.slow_factor:g}x slower, step time log-normal (median 1 s, sigma {args.sigma:g}); fedbuff "
          f"concurrency {args.concurrency}, max staleness {args.max_staleness}")
    print(f"held-out loss: base {figures['base_loss']:.4f}, target {figures['target_loss']:.4f}")
    print(f"{'policy':8} {'sim s to target':>16} {'sim s at end':>13} {'final loss':>11} {'folded':>7} {'trained':>8} {'wall s':>7}")
    for name in ("sync", "fedbuff"):
        row = figures[name]
        reached = "not reached" if row["seconds"] is None else f"{row['seconds']:.1f}"
        print(f"{name:8} {reached:>16} {row['end_seconds']:>13.1f} {row['final_loss']:>11.4f} {row['folded']:>7} "
              f"{row['trained']:>8} {row['wall_s']:>7.1f}")
    sync_s, fedbuff_s = figures["sync"]["seconds"], figures["fedbuff"]["seconds"]
    if sync_s is not None and fedbuff_s:
        print(f"ratio sync / fedbuff (simulated seconds to target): {sync_s / fedbuff_s:.2f}")
    print(f"fedbuff refused {figures['fedbuff']['refused']} updates past max staleness")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
