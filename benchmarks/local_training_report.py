"""The results of benchmarks/local_training.py: each kind's summary, its table, and one table of all kinds.

Kept apart from the measuring so the timing code reads top to bottom.
"""

from __future__ import annotations

import statistics

OVERHEAD_TARGET_PCT = 5.0


def summarise(
    rows: list[dict], *, task: str, seq_len: int, clients: int, blocks: int, data: dict, tokens: int, tolerance: float,
) -> dict:
    """One kind's result: median tokens/s of each side, their ratio, the loss agreement, the repeats."""
    first_diff = max(abs(r["fedlm"]["losses"][0] - r["bare"]["losses"][0]) for r in rows)
    max_diff = max(abs(f - b) for r in rows for f, b in zip(r["fedlm"]["losses"], r["bare"]["losses"], strict=True))
    bare_median = statistics.median(r["bare"]["tokens_per_s"] for r in rows)
    fedlm_median = statistics.median(r["fedlm"]["tokens_per_s"] for r in rows)
    ratio = fedlm_median / bare_median
    return {
        "task": task,
        "seq_len": seq_len,
        "clients": clients,
        "blocks": blocks,
        "data": data,
        "tokens_per_run": tokens,
        "bare_tokens_per_s": bare_median,
        "fedlm_tokens_per_s": fedlm_median,
        "ratio": ratio,
        "overhead_pct": (1 - ratio) * 100,
        "paired_ratio_median": statistics.median(r["ratio"] for r in rows),
        "first_step_loss_max_abs_diff": first_diff,
        "loss_max_abs_diff": max_diff,
        "losses_match": first_diff <= tolerance,
        "first_step_loss": rows[0]["bare"]["losses"][0],
        "repeats_detail": [
            {
                "repeat": r["repeat"],
                "order": r["order"],
                "bare_seconds": r["bare"]["seconds"],
                "fedlm_seconds": r["fedlm"]["seconds"],
                "bare_tokens_per_s": r["bare"]["tokens_per_s"],
                "fedlm_tokens_per_s": r["fedlm"]["tokens_per_s"],
                "ratio": r["ratio"],
            }
            for r in rows
        ],
    }


def data_line(r: dict) -> str:
    if r["task"] == "causal_lm":
        return (f"{r['blocks']} blocks of {r['seq_len']} tokens from {r['clients']} Shakespeare roles' "
                f"{r['data']['samples']} texts")
    d = r["data"]
    return (f"{r['blocks']} conversation rows of <= {r['seq_len']} tokens from {r['clients']} Shakespeare roles "
            f"({d['samples']} conversations, {d['dropped']} dropped as too long, {d['truncated']} truncated)")


def kind_table(r: dict, run: dict) -> str:
    lines = [
        f"{r['task']}: {run['steps']} steps x batch {run['batch_size']}, {r['tokens_per_run']} labelled tokens per run; "
        f"{data_line(r)}",
        "",
        f"{'repeat':>6}  {'order':<10}  {'bare tok/s':>10}  {'fedlm tok/s':>11}  {'ratio':>7}",
    ]
    for x in r["repeats_detail"]:
        lines.append(
            f"{x['repeat']:>6}  {x['order']:<10}  {x['bare_tokens_per_s']:>10.1f}  {x['fedlm_tokens_per_s']:>11.1f}  {x['ratio']:>7.4f}"
        )
    lines += [
        f"{'median':>6}  {'':<10}  {r['bare_tokens_per_s']:>10.1f}  {r['fedlm_tokens_per_s']:>11.1f}  {r['ratio']:>7.4f}",
        "",
        f"fedlm / bare = {r['ratio']:.4f}, overhead {r['overhead_pct']:+.2f} % (target < {OVERHEAD_TARGET_PCT:g} %); "
        f"median of per-repeat ratios {r['paired_ratio_median']:.4f}",
        f"loss check: max |fedlm - bare| first step {r['first_step_loss_max_abs_diff']:.2e}, "
        f"any step {r['loss_max_abs_diff']:.2e} ({'ok' if r['losses_match'] else 'MISMATCH'})",
    ]
    return "\n".join(lines)


def summary_table(run: dict) -> str:
    lines = [
        f"{'kind':<12}  {'fedlm tok/s':>11}  {'bare tok/s':>10}  {'ratio':>7}  {'overhead %':>10}  losses",
    ]
    for r in run["results"]:
        lines.append(
            f"{r['task']:<12}  {r['fedlm_tokens_per_s']:>11.1f}  {r['bare_tokens_per_s']:>10.1f}  {r['ratio']:>7.4f}  "
            f"{r['overhead_pct']:>+10.2f}  {'agree' if r['losses_match'] else 'MISMATCH'}"
        )
    return "\n".join(lines)


def report(run: dict) -> str:
    header = (
        f"model {run['model']}, torch threads {run['torch_threads']}, torch {run['torch']}, "
        f"{run['repeats']} repeats, {run['warmup']} warm-up steps; "
        "bare = plain PEFT loop (causal_lm), TRL-style completion-only SFT loop (instruction)"
    )
    parts = [header] + [kind_table(r, run) for r in run["results"]]
    parts.append("tokens/s are medians over the repeats; overhead = (1 - fedlm / bare) * 100\n" + summary_table(run))
    return "\n\n".join(parts)
