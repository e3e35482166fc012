"""The comparison's outputs: results.json, a Markdown table and a PNG of held-out perplexity.

The headline number per method is the fraction of the centralized gain in held-out
log-perplexity (the mean next-token loss in nats): (base - method) / (base - centralized).
1 means as good as central training; 0 no better than the untrained base model.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from fedlm.experiment.methods import Bench, MethodResult
from fedlm.experiment.outputs import figure
from fedlm.experiment.outputs import write_outputs as write_files
from fedlm.experiment.settings import ExperimentSettings

PLOT_PNG = "held_out_perplexity.png"

LABELS = {
    "base": "base model, untrained",
    "centralized": "centralized LoRA",
    "local_only": "local-only (each client its own adapter)",
    "fedavg": "FedAvg",
    "fedadam": "FedAdam",
    "fedyogi": "FedYogi",
    "fedavg_dp": "FedAvg + user-level DP",
    "fedavg_8bit": "FedAvg, 8-bit updates",
    "fedavg_4bit": "FedAvg, 4-bit updates",
}


def gain_fraction(base: float, method: float, centralized: float) -> float | None:
    """(base - method) / (base - centralized); None when centralized gained nothing."""
    gain = base - centralized
    return (base - method) / gain if gain > 0 else None


def method_entry(result: MethodResult, base: float, centralized: float, seq_len: int) -> dict[str, Any]:
    held_out = result.slices["held_out"]
    entry: dict[str, Any] = {
        "name": result.name,
        "label": LABELS.get(result.name, result.name),
        "held_out": held_out.as_dict(),
        "own": result.slices["own"].as_dict(),
        "fraction_of_centralized_gain": gain_fraction(base, held_out.loss, centralized),
        "training_sequences": result.sequences,
        "training_tokens": result.sequences * seq_len,
        "seconds": round(result.seconds, 1),
    }
    if result.curve:
        start = {"round": 0, "sequences": 0, "loss": base, "perplexity": math.exp(base)}
        entry["curve"] = [start, *result.curve]
    return entry | result.extra


def results_dict(bench: Bench, settings: ExperimentSettings, results: list[MethodResult], seconds: float) -> dict[str, Any]:
    sim, config = bench.sim, bench.sim.config
    by_name = {r.name: r.slices["held_out"].loss for r in results}
    base, centralized = by_name["base"], by_name["centralized"]
    return {
        "model": config.model.name,
        "task": config.task.kind,
        "base_model_dir": str(sim.base.path),
        "dataset": sim.dataset.name,
        "seed": config.run.seed,
        "budget": bench.budget.as_dict(),
        "lora": {"r": config.lora.r, "alpha": config.lora.alpha, "target_modules": list(config.lora.target_modules),
                 "update_size": int(sim.adapter.shared_spec.size)},
        "client": dataclasses.asdict(config.client) | {"note": "local_steps and batch_size per method: see budget and methods"},
        "slices": {
            "held_out": {"clients": len(sim.eval_clients), "sequences": len(bench.held_out.blocks),
                         "tokens": bench.held_out.blocks.num_tokens, "questions": len(bench.held_out.questions)},
            "own": {"clients": len(bench.own), "sequences": sum(len(b) for b in bench.own.values()),
                    "tokens": sum(b.num_tokens for b in bench.own.values()), "questions": len(bench.own_questions)},
        },
        "training_clients": len(bench.clients),
        "population_not_held_out": len(sim.population),
        "experiment": dataclasses.asdict(settings),
        "methods": [method_entry(r, base, centralized, bench.seq_len) for r in results],
        "wall_seconds": round(seconds, 1),
    }


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def method_label(method: dict[str, Any]) -> str:
    if "epsilon" in method:
        return f"{method['label']} (ε = {method['epsilon']:.3f}, δ = {method['delta']:.1e})"
    return method["label"]


def has_choices(results: dict[str, Any]) -> bool:
    return any("choice_accuracy" in m["held_out"] for m in results["methods"])


def choice_cells(row: dict[str, Any]) -> str:
    return f"| {_number(row.get('choice_accuracy'), 3)} "


def markdown_table(results: dict[str, Any]) -> str:
    """The table the README shows, with the run's seed, budget and wall time under it.

    Multiple-choice accuracy (by total option log-likelihood) gets a column per slice when
    the run asked questions; the chance level is printed under the table.
    """
    choices = has_choices(results)
    header = "| method | held-out loss | held-out ppl | held-out acc |" + (" held-out MC acc |" if choices else "")
    header += " own loss | own ppl | own acc |" + (" own MC acc |" if choices else "")
    header += " fraction of centralized gain | training tokens |"
    lines = [header, "|---" + "|---:" * (header.count("|") - 2) + "|"]
    for m in results["methods"]:
        h, o = m["held_out"], m["own"]
        gain = m["fraction_of_centralized_gain"]
        lines.append(
            f"| {method_label(m)} | {_number(h['loss'], 4)} | {_number(h['perplexity'], 2)} | {_number(h['accuracy'], 3)} "
            + (choice_cells(h) if choices else "")
            + f"| {_number(o['loss'], 4)} | {_number(o['perplexity'], 2)} | {_number(o['accuracy'], 3)} "
            + (choice_cells(o) if choices else "")
            + f"| {'n/a' if gain is None else f'{100 * gain:.0f} %'} | {m['training_tokens']:,} |"
        )
    b, s = results["budget"], results["slices"]
    task = results.get("task", "causal_lm")
    lines += [
        "",
        f"Model `{results['model']}`, task `{task}`, seed {results['seed']}, {results['training_clients']} training clients; "
        f"budget {b['tokens']:,} training tokens per method ({b['sequences']} sequences of {b['seq_len']} tokens, "
        f"batch {b['batch_size']}, centralized {b['centralized_steps']} steps). "
        f"Held-out slice: {s['held_out']['clients']} speakers never trained on, {s['held_out']['tokens']:,} tokens; "
        f"own slice: {s['own']['clients']} training clients' own test samples, {s['own']['tokens']:,} tokens"
        + (" (loss and perplexity on response tokens only)" if task == "instruction" else "") + ". "
        f"Wall time {results['wall_seconds'] / 60:.1f} min.",
    ]
    if choices:
        base = next(m for m in results["methods"] if m["name"] == "base")
        lines.append("")
        lines.append(
            f"MC acc: multiple choice, the option with the highest log-likelihood; "
            f"{s['held_out']['questions']} held-out and {s['own']['questions']} own questions; "
            f"chance level {_number(base['held_out'].get('choice_chance'), 3)}."
        )
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Held-out perplexity after each round of every federated method, against training tokens."""
    seq_len = results["budget"]["seq_len"]
    title = f"Held-out speakers, {results['model']}, equal budget of {results['budget']['tokens']:,} tokens"
    with figure(path, title=title, xlabel="training tokens (thousands); a marker after each round",
                ylabel="held-out perplexity") as ax:
        levels = {m["name"]: m for m in results["methods"] if "curve" not in m}
        for name, style in (("base", ":"), ("local_only", "-."), ("centralized", "--")):
            if name in levels:
                ax.axhline(levels[name]["held_out"]["perplexity"], linestyle=style,
                           color="0.3" if name != "centralized" else "k",
                           label=f"{levels[name]['label']} ({levels[name]['held_out']['perplexity']:.2f})")
        federated = [m for m in results["methods"] if "curve" in m]
        for m, (marker, style) in zip(federated, [("o", "-"), ("s", "-"), ("^", "-"), ("x", "--")] * 3, strict=False):
            tokens = [point["sequences"] * seq_len / 1000 for point in m["curve"]]  # 8-bit is dashed: it may lie on FedAvg
            ax.plot(tokens, [point["perplexity"] for point in m["curve"]], marker=marker, linestyle=style, markersize=4,
                    label=method_label(m))


def write_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    return write_files(results, out, table=markdown_table, plot=plot_curves, plot_name=PLOT_PNG)
