"""What `fedlm experiment dp` writes: results.json, a Markdown table and a plot of the kept gain against predicted SNR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedlm.experiment.outputs import figure
from fedlm.experiment.outputs import write_outputs as write_files

PLOT = "gain_vs_predicted_snr.png"
FLOOR = -0.5  # the plot's lowest fraction; a row below it is drawn there with its value
DESIGN_NAMES = {"full": "full participation", "poisson": "DP-FedAvg, Poisson", "banded_mf": "banded MF-DP-FTRL"}
ADAPTER_NAMES = {"fedit": "LoRA", "ffa": "FFA-LoRA"}


def row_name(row: dict[str, Any]) -> str:
    extra = ", noise-aware lr" if row["noise_aware_lr"] else ""
    return f"{DESIGN_NAMES[row['design']]}{extra}"


def _number(value: Any, form: str) -> str:
    return "–" if value is None else format(value, form)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f} %"


def markdown_table(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        "| adapter | design | target ε | ε spent | z on the sum | predicted SNR | held-out loss | ppl | fraction of centralized gain "
        "| fraction of non-private gain | client updates | trained now | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| – | base model | – | – | – | – | {results['base']['loss']:.4f} | {results['base']['perplexity']:.2f} | 0 % | – | 0 | – | – |",
        f"| LoRA | centralized ({results['centralized']['tokens']:,} tokens) | – | – | – | – | "
        f"{results['centralized']['loss']:.4f} | {results['centralized']['perplexity']:.2f} | 100 % | – | – | – | "
        f"{results['centralized']['seconds']:.0f} |",
    ]
    for row in results["rows"]:
        target = "∞ (no DP)" if row["target_epsilon"] is None else f"{row['target_epsilon']:g}"
        lines.append(
            f"| {ADAPTER_NAMES[row['adapter']]} | {row_name(row)} | {target} | {_number(row['epsilon'], '.3f')} | "
            f"{_number(row.get('sum_noise_multiplier'), '.3f')} | {_number(row['predicted_snr'], '.2f')} | {row['loss']:.4f} | "
            f"{row['perplexity']:.2f} | {_percent(row['fraction_of_centralized_gain'])} | "
            f"{_percent(row.get('fraction_of_nonprivate_gain'))} | {row['client_updates']} | {row['trained_now']} | "
            f"{row['seconds']:.0f} |")
    adapters = "; ".join(f"{ADAPTER_NAMES[a]}: P = {v['params']:,}, clip norm {v['clip_norm']:.3f} (the "
                         f"{s['clip_quantile']:g} quantile of {v['public_clients']} held-out speakers' update norms)"
                         for a, v in results["adapters"].items())
    clients = next(iter(results["adapters"].values()))["clients"] if results["adapters"] else 0
    lines += ["", f"Model `{results['model']}`, seed {results['seed']}, {clients} training speakers (δ = 1/N^1.1); each "
              f"client update is {s['local_steps']} local steps of {s['batch_size']} sequence(s), lr {s['lr']:g}; server "
              f"lr {s['server_lr']:g}. Poisson: q = {s['poisson_rate']:g}, {s['poisson_rounds']} round(s); banded MF: "
              f"{s['mf_groups']} cyclic groups, {s['mf_rounds']} rounds, {s['mf_bands']} bands. {adapters}. "
              f"Wall time {results['seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    markers = {"full": "o", "poisson": "s", "banded_mf": "^"}
    colors = {"fedit": "tab:blue", "ffa": "tab:orange"}
    with figure(path, title="Fraction of the centralized gain kept under user-level DP",
                xlabel="predicted signal-to-noise ratio of the released mean (log scale)",
                ylabel="fraction of centralized gain") as ax:
        seen = set()
        for row in results["rows"]:
            if row["predicted_snr"] is None:
                continue
            label = f"{ADAPTER_NAMES[row['adapter']]}, {row_name(row)}"
            fraction = row["fraction_of_centralized_gain"]
            shown = max(fraction, FLOOR)  # a run the noise wrecked is drawn at the floor, its value written beside it
            ax.scatter(row["predicted_snr"], shown, marker=markers[row["design"]] if fraction > FLOOR else "v",
                       color=colors[row["adapter"]], facecolors="none" if row["noise_aware_lr"] else None,
                       label=None if label in seen else label)
            note = f"ε={row['target_epsilon']:g}" + ("" if fraction > FLOOR else f" ({fraction:.0%}, off scale)")
            ax.annotate(note, (row["predicted_snr"], shown), fontsize=6, xytext=(3, 3), textcoords="offset points")
            seen.add(label)
        for row in results["rows"]:
            if row["target_epsilon"] is None and row["design"] == "full":
                ax.axhline(row["fraction_of_centralized_gain"], color=colors[row["adapter"]], lw=0.8, ls="--",
                           label=f"{ADAPTER_NAMES[row['adapter']]}, full participation without DP")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="half the centralized gain")
        ax.set_xscale("log")
        ax.set_ylim(bottom=FLOOR - 0.05)


def write_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    return write_files(results, out, table=markdown_table, plot=plot, plot_name=PLOT)
