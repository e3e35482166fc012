"""`fedlm experiment fleet`'s outputs: results.json, a Markdown table and a PNG of perplexity against simulated time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedlm.experiment.outputs import figure
from fedlm.experiment.outputs import write_outputs as write_files

PLOT_PNG = "perplexity_vs_simulated_time.png"
LABELS = {"sync": "synchronous (waits for the cohort)", "quorum": "quorum (drops stragglers)",
          "fedbuff": "FedBuff (buffered, asynchronous)"}


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:,.0f}"


def markdown_table(results: dict[str, Any]) -> str:
    resolved = results["resolved"]
    lines = [
        f"Fleet of {results['settings']['train_clients']} clients, {results['settings']['slow_share']:.0%} slow "
        f"(x{results['settings']['slow_factor']:g}); {results['model']}; {results['training_tokens_per_policy']:,} "
        f"training tokens folded per policy; quorum {resolved['quorum']}, FedBuff K = {resolved['buffer_size']}, "
        f"max staleness {resolved['max_staleness']}. Base perplexity {results['base_perplexity']:.2f}; target "
        f"{results['target_perplexity']:.2f}.",
        "",
        "| policy | rounds / steps | updates folded | late or refused | final held-out perplexity | simulated s "
        "to target | simulated s, all | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["policies"]:
        lines.append(f"| {LABELS[row['policy']]} | {row['steps']} | {row['updates_folded']} | {row['late_or_refused']} "
                     f"| {row['final_perplexity']:.2f} | {_seconds(row['sim_seconds_to_target'])} "
                     f"| {row['sim_seconds']:,.0f} | {row['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Held-out perplexity after each round or step of every policy, against simulated seconds."""
    settings = results["settings"]
    title = (f"{results['model']}: {settings['slow_share']:.0%} of the fleet {settings['slow_factor']:g}x slower, "
             "equal training tokens")
    with figure(path, title=title, xlabel="simulated seconds on the fleet (virtual clock)",
                ylabel="held-out perplexity") as ax:
        ax.axhline(results["target_perplexity"], linestyle="--", color="k",
                   label=f"target ({results['target_perplexity']:.2f})")
        for row, marker in zip(results["policies"], ("o", "s", "^"), strict=False):
            ax.plot([0.0] + [p["sim_seconds"] for p in row["curve"]],
                    [results["base_perplexity"]] + [p["perplexity"] for p in row["curve"]],
                    marker=marker, markersize=4, label=LABELS[row["policy"]])


def write_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    return write_files(results, out, table=markdown_table, plot=plot_curves, plot_name=PLOT_PNG)
