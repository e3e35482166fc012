"""`fedlm experiment clusters`'s outputs: results.json, the per-genre table and a bar chart per genre per method.

A genre's loss is the mean next-token loss (nats) over its evaluation clients' own test
tokens, pooled (token-weighted); perplexity = exp(loss). Lower is better.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedlm.experiment.outputs import write_outputs as write_files

PLOT_PNG = "per_genre.png"


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def genre_rows(results: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(genre or "pooled", each method's figures there), genres first."""
    methods = results["methods"]
    rows = [(g, [m["by_genre"][g] for m in methods]) for g in results["genres"]]
    return [*rows, ("pooled", [m["pooled"] for m in methods])]


def genre_table(results: dict[str, Any]) -> list[str]:
    methods = results["methods"]
    header = "| genre | training speakers | cohort clients | eval clients | eval tokens |"
    header += "".join(f" {m['label']}: loss | ppl |" for m in methods)
    lines = [header, "|---" + "|---:" * (header.count("|") - 2) + "|"]
    clients = results["clients"]
    for genre, figures in genre_rows(results):
        counts = clients.get(genre) or {k: sum(c[k] for c in clients.values()) for k in ("training", "cohort", "eval")}
        cells = "".join(f" {_number(f['loss'], 4)} | {_number(f['perplexity'], 2)} |" for f in figures)
        name = f"**{genre}**" if genre == "pooled" else genre
        lines.append(f"| {name} | {counts['training']} | {counts['cohort']} | {counts['eval']} | {figures[0]['tokens']:,} |{cells}")
    return lines


def method_table(results: dict[str, Any]) -> list[str]:
    lines = ["| method | globals | globals trained, per round | globals the eval clients use | training tokens "
             "| train s | score s | wall s |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for m in results["methods"]:
        per_round = " ".join(str(n) for n in m["globals_trained_per_round"])
        lines.append(f"| {m['label']} | {m['globals']} | {per_round} | {m['eval_globals']} | {m['training_tokens']:,} "
                     f"| {m['train_seconds']:.0f} | {m['score_seconds']:.0f} | {m['seconds']:.0f} |")
    return lines


def assignment_table(method: dict[str, Any], genres: list[str]) -> list[str]:
    """genre x global: cohort clients over every round (evaluation clients in brackets)."""
    keys = sorted({k for split in (method["cohort_assignment"], method["eval_assignment"]) for c in split.values() for k in c})
    lines = ["| genre |" + "".join(f" global {k} |" for k in keys), "|---" + "|---:" * len(keys) + "|"]
    for genre in genres:
        cohort, held = method["cohort_assignment"].get(genre, {}), method["eval_assignment"].get(genre, {})
        lines.append(f"| {genre} |" + "".join(f" {cohort.get(k, 0)} ({held.get(k, 0)}) |" for k in keys))
    return lines


def markdown_table(results: dict[str, Any]) -> str:
    """The per-genre table, the methods' costs, IFCA's assignment by genre, and the run's settings."""
    s, b = results["experiment"], results["budget"]
    lines = [*genre_table(results), "", *method_table(results)]
    ifca = next((m for m in results["methods"] if m["name"] == "ifca" and m["globals"] > 1), None)
    if ifca is not None:
        lines += ["", "IFCA's globals by genre: cohort clients over every round (evaluation clients in brackets).", "",
                  *assignment_table(ifca, results["genres"])]
    lines += ["", (
        f"Model `{results['model']}`, seed {results['seed']}, genres {', '.join(results['genres'])}. Every method: "
        f"{s['rounds']} rounds x {s['clients_per_round']} clients x {s['local_steps']} local steps of batch "
        f"{b['batch_size']} x {b['seq_len']} tokens (budget {b['tokens']:,} tokens; the same cohorts), client lr "
        f"{b['lr']:g}; IFCA probes {s['probe_batches']} batch(es). Evaluation: {s['eval_per_genre']} held-out speakers "
        f"per genre, each on up to {s['eval_sequences']} blocks of its own test text under the global its method "
        f"gives it; a genre's loss pools its clients' tokens. Train s includes each round's small pooled evaluation "
        f"(and IFCA's probes). Wall time {results['wall_seconds']:.0f} s."
    )]
    return "\n".join(lines) + "\n"


def plot_genres(results: dict[str, Any], path: Path) -> None:
    """Perplexity per genre per method (bars), and each clustered method's loss against the one global's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, methods = genre_rows(results), results["methods"]
    x, width = np.arange(len(rows)), 0.8 / len(methods)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
    for i, m in enumerate(methods):
        left.bar(x + (i - (len(methods) - 1) / 2) * width, [f[i]["perplexity"] for _, f in rows], width,
                 label=m["label"], color=f"C{i}")
    others = [(i, m) for i, m in enumerate(methods) if m["name"] != "one_global"]
    reference = next((i for i, m in enumerate(methods) if m["name"] == "one_global"), None)
    if reference is not None:
        for j, (i, m) in enumerate(others):
            change = [f[i]["loss"] - f[reference]["loss"] for _, f in rows]
            right.bar(x + (j - (len(others) - 1) / 2) * (0.8 / max(len(others), 1)), change, 0.8 / max(len(others), 1),
                      label=m["label"], color=f"C{i}")
    right.axhline(0.0, color="k", linewidth=0.8)
    left.set_ylim(0, 1.15 * max(f["perplexity"] for _, figures in rows for f in figures))
    for ax in (left, right):
        ax.set_xticks(x, [genre for genre, _ in rows], fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        if ax.get_legend_handles_labels()[0]:  # the right panel is empty while only one global has run
            ax.legend(fontsize=7, loc="upper left", ncol=len(methods))
    left.set_ylabel("perplexity, evaluation clients' own text")
    right.set_ylabel("loss - one global's loss (nats); below 0 is better")
    left.set_title(f"Per genre, {results['model']}, {results['budget']['tokens']:,} training tokens each", fontsize=9)
    right.set_title("against one global", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    return write_files(results, out, table=markdown_table, plot=plot_genres, plot_name=PLOT_PNG)
