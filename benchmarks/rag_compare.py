"""Federated retrieval on the plays: recall@10 and MRR@10 on held-out plays' own collections, per method, over seeds.

What it measures
    fedlm.retrieval.compare on the embedded plays (one client per play): held-out plays never
    train, and each is scored on its whole collection (all its speeches of --min-chars or
    more as documents, up to --queries inverse-cloze queries with the query sentence taken out
    of its document, every document a candidate). Rows, at the same number of training
    (query, passage) pairs, R x C x S x B:
      base               all-MiniLM-L6-v2, untrained
      federated          FedAvg of the "retrieval" client work (LoRA, InfoNCE) through the simulation engine
      federated_rerank   the federated encoder's top --candidates reordered by a cross-encoder trained by FedAvg
                         ("rerank" client work) on the same budget
      local_only         --local-clients training plays, each alone for R*C*S steps; the mean of their scores
      centralized        one optimizer over the pooled pairs of every training play, R*C*S steps
    Every seed (run.seed: LoRA init, pair draw, cohorts, batches, dropout) is scored on the same
    held-out collections (chosen by --split-seed), so the base row is measured once and the
    spread is that of training. Wall time is per method and seed, training and evaluation.

Outputs (under --out, docs/rag by default)
    results.json   every number: settings, every seed's rows, mean and std per method, the federated gain
    results.md     the table (mean +- std over seeds) and how it was run
    recall_mrr.png recall@10 and MRR@10 per method, error bars one std over seeds

How to run
    python benchmarks/rag_compare.py                     # MiniLM, 3 seeds (see README for the measured wall time)
    python benchmarks/rag_compare.py --quick             # tiny encoder, one seed, a small budget: seconds
    python benchmarks/rag_compare.py --measure           # time one step and one evaluation, predict the wall time
    python benchmarks/rag_compare.py --rerank            # with the federated encoder + reranker row (slow on a CPU)
    python benchmarks/rag_compare.py --seeds 0 --rounds 2 --out /tmp/rag   # one seed, a smaller budget
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedlm.config import RunConfig, config_from_dict
from fedlm.retrieval.compare import METHODS, CompareSettings, run_comparison

LABELS = {
    "base": "base encoder (untrained)",
    "federated": "federated query encoder (FedAvg)",
    "federated_rerank": "federated encoder + federated reranker",
    "local_only": "local-only (each client alone, mean)",
    "centralized": "centralized (pooled pairs)",
}
TICKS = {"base": "base\n(untrained)", "federated": "federated\nencoder",
         "federated_rerank": "federated encoder\n+ reranker", "local_only": "local-only\n(mean)",
         "centralized": "centralized\n(pooled)"}
# Sized with --measure on 2 shared CPU cores (see the README for the measured step and the wall time).
DEFAULTS = {"rounds": 4, "clients_per_round": 2, "local_steps": 8, "batch_size": 8, "queries": 200, "held_out": 2,
            "local_clients": 2, "lr": 1e-3, "temperature": 0.05, "seq_len": 64, "query_len": 32, "candidates": 20}
QUICK = {"rounds": 2, "clients_per_round": 2, "local_steps": 2, "batch_size": 4, "queries": 8, "held_out": 2,
         "local_clients": 2, "lr": 1e-2, "temperature": 0.05, "seq_len": 64, "query_len": 32, "candidates": 8}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny encoder, one seed, a small budget (seconds)")
    parser.add_argument("--model", default=None, help="encoder: minilm (default) or tiny-encoder")
    for key in DEFAULTS:
        kind = float if key in ("lr", "temperature") else int
        parser.add_argument(f"--{key.replace('_', '-')}", type=kind, default=None, help=f"default {DEFAULTS[key]}")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="run seeds (default 0 1 2; --quick: 0)")
    parser.add_argument("--split-seed", type=int, default=0, help="which plays are held out, and their queries")
    parser.add_argument("--min-chars", type=int, default=80, help="speeches shorter than this are no document")
    parser.add_argument("--skip", nargs="*", default=[], choices=("local_only", "centralized"),
                        help="rows to leave out (a reranker-only run: --rerank --skip local_only centralized)")
    parser.add_argument("--rerank", action="store_true",
                        help="add the federated encoder + reranker row (about 3x a retrieval row's training, "
                             "plus mining)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); on cores other work shares, 1 can be twice "
                             "as fast as 2")
    parser.add_argument("--measure", action="store_true",
                        help="time one training step and one evaluation, predict the run's wall time, and stop")
    parser.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                        help="write the table and the plot again from a run's results.json, and stop")
    parser.add_argument("--out", type=Path, default=Path("docs/rag"))
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[RunConfig, CompareSettings, dict[str, Any]]:
    """The run config and comparison settings: the defaults (or --quick's), then any flag given."""
    preset = QUICK if args.quick else DEFAULTS
    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in preset.items()}
    model = args.model or ("tiny-encoder" if args.quick else "minilm")
    config = config_from_dict({
        "model": {"name": model}, "task": {"kind": "retrieval"}, "data": {"seq_len": values["seq_len"]},
        "client": {"lr": values["lr"]}, "eval": {"batch_size": 32},
        "retrieval": {"temperature": values["temperature"], "query_len": values["query_len"],
                      "candidates": values["candidates"], "min_chars": args.min_chars},
    })
    seeds = tuple(args.seeds) if args.seeds else ((0,) if args.quick else (0, 1, 2))
    settings = CompareSettings(
        rounds=values["rounds"], clients_per_round=values["clients_per_round"], local_steps=values["local_steps"],
        batch_size=values["batch_size"], queries=values["queries"], held_out=values["held_out"],
        local_clients=values["local_clients"], split_seed=args.split_seed, seeds=seeds,
        rerank=args.rerank or args.quick, skip=tuple(args.skip))
    return config, settings, values


def cell(summary: dict[str, float]) -> str:
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def gain_line(gain: dict[str, Any]) -> str:
    """The federated encoder's gain over base, per metric, against the larger spread of the two rows."""
    parts = []
    for metric, g in (("recall@10", gain["recall"]), ("MRR@10", gain["mrr"])):
        verdict = "beats" if g["beats_spread"] else "does not beat"
        parts.append(f"{metric} {g['mean']:+.3f} ± {g['std']:.3f} ({verdict} the larger spread, "
                     f"{g['largest_spread']:.3f})")
    return "Federated encoder minus base, per seed: " + " and ".join(parts) + "."


def markdown_table(results: dict[str, Any]) -> str:
    s, summary = results["settings"], results["summary"]
    counts = next(iter(results["held_out"].values()))
    lines = ["| method | recall@10 | MRR@10 | training pairs | wall time per seed |", "|---|---:|---:|---:|---:|"]
    for name in [m for m in METHODS if m in summary]:
        row = summary[name]
        pairs = ", ".join(f"{p:,}" for p in row["pairs"])
        once = " (once)" if name == "base" and len(s["seeds"]) > 1 else ""
        lines.append(f"| {LABELS[name]} | {cell(row['recall'])} | {cell(row['mrr'])} | {pairs} | "
                     f"{row['seconds']['mean']:.0f} s{once} |")
    rerank = (f" The reranker reorders the federated encoder's top {results['candidates']}."
              if "federated_rerank" in summary else "")
    lines += [
        "",
        f"Model `{results['model']}`; seeds {', '.join(map(str, s['seeds']))}, mean ± std over seeds (ddof 1; the base "
        "row is measured once: untrained, on the same collections, it cannot differ). "
        f"Budget per trained row: {s['rounds']} rounds x {s['clients_per_round']} clients x {s['local_steps']} local "
        f"steps x batch {s['batch_size']} = {s['pairs']:,} (query, passage) pairs ({s['steps']} optimizer steps for "
        f"centralized and for each of {s['local_clients']} local-only clients); AdamW lr {results['lr']:g}, InfoNCE "
        f"temperature {results['temperature']:g}, LoRA on query/value; passages and documents cut at "
        f"{results['seq_len']} tokens, queries at {results['query_len']}.",
        f"Held out: {counts['collections']} play(s) that never train, {counts['documents']:,} documents (all their "
        f"speeches), {counts['queries']} inverse-cloze queries, every document a candidate; "
        f"{counts['training_clients']} training plays.{rerank}",
        gain_line(results["federated_gain"]),
        f"Total wall time {results['wall_seconds'] / 60:.1f} min, torch threads: {results['torch_threads']} "
        f"({results.get('machine', '')}).",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(results: dict[str, Any], out: Path) -> str:
    """results.json, results.md and recall_mrr.png under `out`; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    (out / "results.md").write_text(table)
    plot(results, out / "recall_mrr.png")
    return table


def plot(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: recall@10 and MRR@10 per method, error bars one std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    summary = results["summary"]
    names = [m for m in METHODS if m in summary]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for offset, (metric, label) in zip((-0.2, 0.2), (("recall", "recall@10"), ("mrr", "MRR@10")), strict=True):
        means = [summary[n][metric]["mean"] for n in names]
        stds = [summary[n][metric]["std"] for n in names]
        ax.bar(x + offset, means, 0.4, yerr=stds, capsize=4, label=label)
    ax.set_xticks(x, [TICKS[n] for n in names], fontsize=8)
    ax.set_ylabel("on held-out plays (mean ± std over seeds)")
    ax.set_title(f"{results['model']}: retrieval on held-out plays' own collections, "
                 f"seeds {results['settings']['seeds']}, "
                 f"{results['settings']['pairs']:,} training pairs per method", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def measure(config: RunConfig, settings: CompareSettings) -> dict[str, float]:
    """Seconds of one training step (the second of two: the first warms up) and of one held-out evaluation,
    and the wall time they predict for the whole comparison without the reranker row."""
    import dataclasses

    from fedlm.client.train import train_local
    from fedlm.retrieval.compare import evaluate, make_bench, pool_pairs

    bench = make_bench(config, settings, settings.seeds[0])
    pooled = pool_pairs([bench.sim.train_blocks(c) for c in bench.clients[:4]])
    steps = dataclasses.replace(bench.config.client, local_steps=1)
    seconds = []
    for first in (0, settings.batch_size):
        batch = [pooled.take(range(first, first + settings.batch_size))]
        started = time.perf_counter()
        train_local(bench.sim.adapter.model, bench.sim.adapter.trainable, batch, steps, loss_fn=bench.sim.work.loss)
        seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    evaluate(bench)
    evaluation = time.perf_counter() - started
    per_seed = (2 + settings.local_clients) * settings.steps * seconds[-1] + (2 + settings.local_clients) * evaluation
    return {"step_seconds": seconds[-1], "eval_seconds": evaluation,
            "predicted_minutes": (evaluation + len(settings.seeds) * per_seed) / 60}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config, settings, _ = resolve(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.render is not None:  # the table and the plot again, from a run's results.json
        print(write_outputs(json.loads(args.render.read_text()), args.out))
        return 0
    if args.measure:
        print(json.dumps(measure(config, settings), indent=2))
        return 0
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.0f} s] {message}", flush=True)

    log(f"{config.model.name}: seeds {settings.seeds}, {settings.pairs} pairs per trained row, "
        f"rerank {settings.rerank}")
    results = run_comparison(config, settings, log)
    results["machine"] = f"{platform.machine()}, {platform.processor() or platform.system()}, torch {torch.__version__}"
    print(write_outputs(results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
