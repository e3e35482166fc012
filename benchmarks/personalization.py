"""Personalization per client on the plays: the global, fine-tuning, Ditto, a Reptile-trained global, private layers.

A thin wrapper over `fedlm experiment personalize` (fedlm.experiment.personalize, where the
methods are described) that keeps this script's flags. Every method is scored on each
evaluation client's own test text, as a distribution over clients: mean, median and p90 of the
per-client loss, the mean perplexity, the share of clients made worse than the FedAvg global.

How to run
    python benchmarks/personalization.py --threads 1      # SmolLM2-135M: 1,051 s measured on a busy 2-core machine
    python benchmarks/personalization.py --model tiny     # the tiny random model, seconds
    python benchmarks/personalization.py --json out.json  # also write every figure (no text) as JSON
    python benchmarks/personalization.py --out DIR        # results.json, results.md and the plot, as the command writes them
The same run as a command: fedlm experiment personalize --set experiment.rounds=3 ... (see --help).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

from fedlm.config import ConfigError, RunConfig, config_from_dict
from fedlm.experiment.personalize import run_personalization
from fedlm.experiment.personalize_report import markdown_table, write_outputs
from fedlm.experiment.personalize_settings import PersonalizeSettings, make_personalize_settings


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
    parser.add_argument("--out", type=Path, default=None, help="write results.json, results.md and the plot here")
    return parser.parse_args(argv)


def run_config(args: argparse.Namespace) -> RunConfig:
    return config_from_dict({
        "model": {"name": args.model, "threads": args.threads},
        "data": {"seq_len": args.seq_len or (64 if args.model == "tiny" else 128)},
        "client": {"batch_size": args.batch_size, "lr": args.lr},
    })


def experiment_settings(args: argparse.Namespace) -> PersonalizeSettings:
    keys = ("rounds", "clients_per_round", "local_steps", "eval_clients", "eval_sequences", "steps", "personal_lr",
            "ditto_lambda", "reptile_server_lr", "reptile_steps", "site_min_lines", "private_layers")
    return make_personalize_settings({key: getattr(args, key) for key in keys})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING)
    try:
        config, settings = run_config(args), experiment_settings(args)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    started = time.perf_counter()
    print(f"{args.model}: {settings.rounds} rounds x {settings.clients_per_round} clients x {settings.local_steps} steps "
          f"(batch {args.batch_size}); personal: {settings.personal()}", flush=True)
    results = run_personalization(config, settings, lambda message: print(
        f"{time.perf_counter() - started:6.0f} s {message}", flush=True))
    print("\n" + markdown_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.out is not None:
        print(f"wrote {', '.join(str(p) for p in write_outputs(results, args.out).values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
