"""Personalization per client on the plays: the global, fine-tuning, Ditto, a Reptile-trained global, private layers.

What it measures
    Every method scored on each evaluation client's OWN test text (fedlm.eval.personalization),
    as a distribution over clients: mean, median and 90th percentile of the per-client loss
    (lower is better, so p90 is the edge of the worst-served 10 %), the mean per-client
    perplexity, and the share of clients made worse than the FedAvg global, with wall times.

    held-out speakers   FedAvg trains a global over the training speakers (--rounds x
                        --clients-per-round x --local-steps); the held-out speakers are scored
                        under it, after --steps of fine-tuning on their own training text, and
                        after Ditto's personal step (lambda --ditto-lambda) from it.
    Reptile (d)         A second global trained for fast adaptation: FedAvg with --reptile-steps
                        local steps, a server step size --reptile-server-lr < 1 and uniform
                        client weights is batched Reptile over clients (Nichol et al. 2018, arXiv:1803.02999; Jiang et al. 2019,
                        arXiv:1909.12488). It sees the same training tokens as FedAvg: as many
                        more local steps as fewer clients a round. Scored as it is and fine-tuned.
    private (a)         A cross-silo run (data.min_lines = --site-min-lines leaves a few large
                        roles; eval.mode = "per_site", every site trains every round) whose last
                        --private-layers decoder layers' LoRA factors are private (lora.private):
                        each site under the global plus its own private layers, against the
                        global with the initial private layers, and fine-tuned from the global.

How to run
    python benchmarks/personalization.py                  # SmolLM2-135M, about 10 min on 2 quiet cores
    python benchmarks/personalization.py --model tiny     # the tiny random model, seconds
    python benchmarks/personalization.py --json out.json  # also write every figure (no text) as JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedlm.config import RunConfig, apply_overrides, config_from_dict
from fedlm.eval.personalization import PersonalReport, PersonalSettings, evaluate_personalization
from fedlm.experiment.methods import federated_simulation, reset_adapter
from fedlm.sim.engine import simulate
from fedlm.sim.setup import Simulation, prepare


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help='"smollm2" (default) or "tiny" for a quick check')
    parser.add_argument("--seq-len", type=int, default=0, help="tokens per block (0: 128 for smollm2, 64 for tiny)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients-per-round", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3, help="client.lr of federated training")
    parser.add_argument("--eval-clients", type=int, default=8, help="held-out speakers scored")
    parser.add_argument("--eval-sequences", type=int, default=4, help="blocks of each client's own test text scored")
    parser.add_argument("--steps", type=int, default=4, help="personal steps of finetune and ditto")
    parser.add_argument("--personal-lr", type=float, default=2e-3)
    parser.add_argument("--ditto-lambda", type=float, default=100.0,
                        help="Ditto's lambda: each personal step keeps 1 / (1 + personal_lr * lambda) of v - w_global")
    parser.add_argument("--reptile-server-lr", type=float, default=0.5)
    parser.add_argument("--reptile-steps", type=int, default=8, help="local steps of the Reptile global's clients")
    parser.add_argument("--site-min-lines", type=int, default=900, help="private run: roles with this many lines are sites")
    parser.add_argument("--private-layers", type=int, default=1, help="private run: last decoder layers kept private (0: skip)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (model.threads; 0: torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    return parser.parse_args(argv)


@dataclass
class Row:
    name: str
    report: PersonalReport
    method: str
    reference: dict[str, float]  # the per-client losses this row is compared with (the FedAvg global)
    seconds: float  # training (for a global) or personalization, wall
    trained_tokens: int


def base_config(args: argparse.Namespace) -> RunConfig:
    seq_len = args.seq_len or (64 if args.model == "tiny" else 128)
    return config_from_dict({
        "model": {"name": args.model, "threads": args.threads},
        "data": {"seq_len": seq_len},
        "federation": {"rounds": args.rounds, "clients_per_round": args.clients_per_round},
        "client": {"local_steps": args.local_steps, "batch_size": args.batch_size, "lr": args.lr},
        "eval": {"mode": "held_out", "clients": args.eval_clients, "max_sequences": args.eval_sequences,
                 "multiple_choice": "off"},
    })


def reptile_config(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """FedAvg as batched Reptile: more local steps, a server step size < 1, every task (client) weighing the same;
    as many training tokens as the FedAvg run."""
    tokens = config.federation.clients_per_round * config.client.local_steps
    clients = max(1, tokens // args.reptile_steps)
    if clients * args.reptile_steps != tokens:
        raise SystemExit(f"--reptile-steps {args.reptile_steps} does not divide clients x local steps = {tokens}: "
                         "the Reptile global would not see the FedAvg global's training tokens")
    return apply_overrides(config, {"federation": {"clients_per_round": clients},
                                    "client": {"local_steps": args.reptile_steps},
                                    "strategy": {"server_lr": args.reptile_server_lr, "weighting": "uniform"}})


def trained_tokens(config: RunConfig, rounds: int) -> int:
    fed, client = config.federation, config.client
    return rounds * fed.clients_per_round * client.local_steps * client.batch_size * config.data.seq_len


def train_global(sim: Simulation, name: str) -> tuple[np.ndarray, float, int]:
    """(global vector, wall seconds, training tokens) of a run of `sim`'s configuration from the initial adapter."""
    started = time.perf_counter()
    reset_adapter(sim.adapter)
    result = simulate(sim)
    seconds = time.perf_counter() - started
    print(f"  {name}: {len(result.records)} rounds in {seconds:.0f} s, pooled held-out loss "
          f"{result.base_eval.loss:.4f} -> {result.final_eval.loss:.4f}", flush=True)
    return result.state.global_vector.copy(), seconds, trained_tokens(sim.config, len(result.records))


def personalize(sim: Simulation, global_vector: np.ndarray, methods: tuple[str, ...], settings: PersonalSettings,
                name: str, private_state: dict | None = None) -> PersonalReport:
    started = time.perf_counter()
    report = evaluate_personalization(sim, global_vector, methods=methods, settings=settings, private_state=private_state,
                                      on_client=lambda done, total: print(f"  {name}: client {done}/{total}", flush=True))
    print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return report


def held_out_rows(args: argparse.Namespace, settings: PersonalSettings) -> tuple[list[Row], Simulation]:
    config = base_config(args)
    sim = prepare(config)
    fedavg, fedavg_s, fedavg_tokens = train_global(sim, "FedAvg")
    reptile_sim = federated_simulation(sim, reptile_config(config, args), sim.population)
    reptile, reptile_s, reptile_tokens = train_global(reptile_sim, "Reptile")
    first = personalize(sim, fedavg, ("global", "finetune", "ditto"), settings, "FedAvg personalization")
    second = personalize(reptile_sim, reptile, ("global", "finetune"), settings, "Reptile personalization")
    reference = first.methods["global"].losses()
    rows = [
        Row("FedAvg global (reference)", first, "global", reference, fedavg_s, fedavg_tokens),
        Row("FedAvg + finetune (b)", first, "finetune", reference, first.methods["finetune"].seconds, fedavg_tokens),
        Row("FedAvg + Ditto (c)", first, "ditto", reference, first.methods["ditto"].seconds, fedavg_tokens),
        Row("Reptile global (d)", second, "global", reference, reptile_s, reptile_tokens),
        Row("Reptile + finetune (d)", second, "finetune", reference, second.methods["finetune"].seconds, reptile_tokens),
    ]
    return rows, sim


def private_rows(args: argparse.Namespace, settings: PersonalSettings, layers: int) -> list[Row]:
    """The cross-silo run with the last `args.private_layers` of `layers` decoder layers private."""
    patterns = [f"*layers.{i}.*" for i in range(layers - args.private_layers, layers)]
    config = apply_overrides(base_config(args), {"data": {"min_lines": args.site_min_lines},
                                                 "eval": {"mode": "per_site"}, "lora": {"private": patterns}})
    sim = prepare(config)
    sites = len(sim.population)
    config = apply_overrides(config, {"federation": {"clients_per_round": sites}})
    sim = federated_simulation(sim, config, sim.population)
    private: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    result = simulate(sim, private_state=private)
    seconds = time.perf_counter() - started
    print(f"  per-site run: {sites} sites, {len(result.records)} rounds in {seconds:.0f} s", flush=True)
    report = personalize(sim, result.state.global_vector, ("global", "private", "finetune"), settings, "sites",
                         private_state=private)
    reference = report.methods["global"].losses()
    tokens = trained_tokens(config, len(result.records))
    return [Row(f"global, initial private layers ({sites} sites)", report, "global", reference, seconds, tokens),
            Row("global + own private layers (a)", report, "private", reference, report.methods["private"].seconds, tokens),
            Row("global + finetune (b)", report, "finetune", reference, report.methods["finetune"].seconds, tokens)]


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print("| method | clients | mean loss | median loss | p90 loss | mean ppl | median ppl | p90 ppl | worse than ref. "
          "| mean change | wall s | train tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        d = row.report.summary(row.method, row.reference)
        print(f"| {row.name} | {d.clients} | {d.mean_loss:.4f} | {d.median_loss:.4f} | {d.p90_loss:.4f} | "
              f"{d.mean_perplexity:.2f} | {d.median_perplexity:.2f} | {d.p90_perplexity:.2f} | {d.share_worse:.0%} | "
              f"{d.mean_change:+.4f} | {row.seconds:.0f} | {row.trained_tokens} |")


def as_json(rows: list[Row]) -> list[dict]:
    return [{"name": r.name, "summary": r.report.summary(r.method, r.reference).as_dict(), "seconds": r.seconds,
             "trained_tokens": r.trained_tokens, "loss_by_client": r.report.methods[r.method].losses()} for r in rows]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING)
    settings = PersonalSettings(steps=args.steps, lr=args.personal_lr, ditto_lambda=args.ditto_lambda,
                                max_sequences=args.eval_sequences)
    started = time.perf_counter()
    print(f"{args.model}: {args.rounds} rounds x {args.clients_per_round} clients x {args.local_steps} steps "
          f"(batch {args.batch_size}); personal: {settings}", flush=True)
    held_out, sim = held_out_rows(args, settings)
    layers = sim.base.model.config.num_hidden_layers
    del sim
    sites = private_rows(args, settings, layers) if args.private_layers else []
    print_table("Held-out speakers, each on its own test text (reference: the FedAvg global)", held_out)
    if sites:
        print_table(f"Sites with their last {args.private_layers} decoder layer(s) private (per_site), each on its own "
                    "test split (reference: the global with the initial private layers)", sites)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "held_out": as_json(held_out), "sites": as_json(sites)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
