"""`fedlm experiment personalize`'s outputs: results.json, a Markdown table per client group and a PNG.

The figures are over clients, each client counting once (fedlm.eval.personalization.summarize):
mean, median and p90 of the per-client loss (p90: the edge of the worst-served 10 %, lower is
better), the mean per-client perplexity, and the share of clients whose loss is strictly above
their loss under the table's reference global.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fedlm.experiment.outputs import write_outputs as write_files

PLOT_PNG = "per_client_loss.png"


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def table_lines(table: dict[str, Any]) -> list[str]:
    lines = [f"**{table['title']}**", "",
             "| method | clients | mean loss | median loss | p90 loss | mean ppl | p90 ppl | worse than reference "
             "| mean change | wall s | training tokens |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in table["rows"]:
        d = row["summary"]
        lines.append(
            f"| {row['label']} | {d['clients']} | {_number(d['mean_loss'], 4)} | {_number(d['median_loss'], 4)} "
            f"| {_number(d['p90_loss'], 4)} | {_number(d['mean_perplexity'], 2)} | {_number(d['p90_perplexity'], 2)} "
            f"| {100 * d['share_worse']:.0f} % | {d['mean_change']:+.4f} | {row['seconds']:.0f} | {row['training_tokens']:,} |"
        )
    return lines


def markdown_table(results: dict[str, Any]) -> str:
    """Every table, then the run's settings and wall time in one paragraph."""
    lines: list[str] = []
    for table in results["tables"]:
        lines += [*table_lines(table), ""]
    s = results["experiment"]
    lines.append(
        f"Model `{results['model']}`, seed {results['seed']}, sequences of {results['seq_len']} tokens, batch "
        f"{results['batch_size']}, client lr {results['client_lr']:g}. Globals: {s['rounds']} rounds x "
        f"{s['clients_per_round']} clients x {s['local_steps']} local steps (Reptile: {s['reptile_steps']} steps, "
        f"server lr {s['reptile_server_lr']:g}, uniform weights, the same training tokens). Personal: {s['steps']} steps "
        f"at lr {s['personal_lr']:g}, Ditto lambda {s['ditto_lambda']:g}; each client's own test text up to "
        f"{s['eval_sequences']} blocks. Wall s: training, for a global's row (its per-round evaluation included); "
        f"personalizing every client, for the others. p90: the 90th percentile of per-client loss, the edge of the "
        f"worst-served 10 %. Wall time {results['wall_seconds']:.0f} s."
    )
    return "\n".join(lines) + "\n"


def loss_arrays(table: dict[str, Any]) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(labels, per-client losses, per-client change against the reference), clients in one sorted order."""
    reference = next(r for r in table["rows"] if r["name"] == table["reference"])["loss_by_client"]
    clients = sorted(reference)
    labels, losses, changes = [], [], []
    for row in table["rows"]:
        loss = np.array([row["loss_by_client"][c] for c in clients])
        labels.append(row["label"].replace(" (reference)", "").replace(", initial private layers", ",\ninitial private"))
        losses.append(loss)
        changes.append(loss - np.array([reference[c] for c in clients]))
    return labels, losses, changes


def plot_distributions(results: dict[str, Any], path: Path) -> None:
    """Per table: each method's per-client losses (box and points), and each client's change against the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = results["tables"]
    fig, axes = plt.subplots(len(tables), 2, figsize=(11, 4.2 * len(tables)), dpi=120, squeeze=False)
    for (left, right), table in zip(axes, tables, strict=True):
        labels, losses, changes = loss_arrays(table)
        positions = np.arange(1, len(labels) + 1)
        for ax, values in ((left, losses), (right, changes)):
            ax.boxplot(values, positions=positions, widths=0.5, showfliers=False)
            for i, (x, v) in enumerate(zip(positions, values, strict=True)):
                ax.plot(x + np.linspace(-0.12, 0.12, len(v)), v, "o", color=f"C{i}", markersize=3, alpha=0.7)
            ax.set_xticks(positions, labels, fontsize=7, rotation=20, ha="right")
            ax.grid(alpha=0.3, axis="y")
        left.set_ylabel("per-client loss (nats), own test text")
        right.axhline(0.0, color="k", linewidth=0.8)
        right.set_ylabel("loss - reference loss, per client")
        left.set_title(f"{table['title'].split(' (')[0]}: {table['clients']} clients", fontsize=9)
        right.set_title("change against the reference: above 0 is worse", fontsize=9)
    fig.suptitle(f"Personalization per client, {results['model']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    return write_files(results, out, table=markdown_table, plot=plot_distributions, plot_name=PLOT_PNG)
