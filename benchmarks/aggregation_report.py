"""Plain-text report of benchmarks/aggregation.py: one table per case, and the run's header.

Kept apart from the measuring so the timing code reads top to bottom; the targets are
the issue's (see aggregation.py's docstring).
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy as np
import scipy

STEP_CASE = "100x1M"  # the case the server-step target applies to
BANDWIDTH_TARGET = 0.5  # accept_update bandwidth / copyto bandwidth
STEP_TARGET_S = 0.2
REFERENCE_COLUMNS = 2000  # columns checked against a float64 weighted mean


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "MISSED")


def table(r: dict, args: argparse.Namespace) -> str:
    ps, rs = r["passes"], r["rounds"]
    lines = [
        f"case {r['case']}: N={r['n']} x P={r['p']:,} float32 ({r['update_bytes'] / 1e6:.0f} MB of updates), "
        f"{args.repeats} repeats (robust {min(args.robust_repeats, args.repeats)}); median and min seconds",
        "",
        f"{'pass over the N updates':<40} {'median s':>9} {'min s':>9} {'GB/s':>7} {'x copyto':>9}",
    ]
    labels = {
        "copyto": "np.copyto (baseline)",
        "fold": "fold alone (mean.fold, saxpy)",
        "check_update": "check_update alone",
    }
    for key, label in labels.items():
        s = ps[key]
        lines.append(f"{label:<40} {s['median']:>9.4f} {s['min']:>9.4f} {s['gb_per_s']:>7.1f} {s['vs_copyto']:>9.2f}")
    lines += [
        "",
        f"{'round (pipeline)':<16} {'reps':>4} {'open s':>8} {'accept s':>9} {'close s':>9} "
        f"{'step s':>8} {'step min':>9} {'accept GB/s':>11} {'x copyto':>9}",
    ]
    for vname, e in rs.items():
        lines.append(
            f"{vname:<16} {e['repeats']:>4} {e['open']['median']:>8.4f} {e['accept']['median']:>9.4f} "
            f"{e['close']['median']:>9.4f} {e['step']['median']:>8.4f} {e['step']['min']:>9.4f} "
            f"{e['accept_gb_per_s']:>11.1f} {e['accept_vs_copyto']:>9.2f}"
        )
    lines += [
        "(step = accept of all N + close_round; open_round is shown apart. robust rounds copy each update into",
        " an [N, P] stack on accept and aggregate it in close_round.)",
        "",
        f"fedavg accept bandwidth {r['accept_gb_per_s']:.1f} GB/s = {r['accept_vs_copyto']:.2f} x copyto "
        f"(paired per-repeat median {r['accept_vs_copyto_paired_median']:.2f}; target >= {BANDWIDTH_TARGET}): "
        f"{verdict(r['bandwidth_target_met'])}",
        f"fold alone = {r['fold_vs_copyto']:.2f} x copyto; check_update is {r['check_share_of_accept'] * 100:.0f} % "
        f"of accept_update's time; the rest of accept beyond check_update + fold: {r['accept_other_s'] * 1e3:+.1f} ms",
    ]
    if r["case"] == STEP_CASE or args.quick:
        lines.append(
            f"fedavg server step {r['fedavg_step_s']:.4f} s median, {r['fedavg_step_min_s']:.4f} s min "
            f"(target < {STEP_TARGET_S} s for N=100 x P=1M): {verdict(r['step_target_met'])}"
        )
    lines.append(
        f"check: engine result == global + fold sum / weight sum exactly: {'ok' if r['check_exact'] else 'MISMATCH'}; "
        f"float64 weighted mean on {min(r['p'], REFERENCE_COLUMNS)} columns: {'ok' if r['check_float64'] else 'MISMATCH'}"
    )
    return "\n".join(lines)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def header(load_before: list[float] | None, load_after: list[float] | None) -> str:
    env = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    return (
        f"aggregation benchmark: python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"{os.cpu_count()} CPUs, thread env {env or 'unset'}\n"
        f"load average (1, 5, 15 min) before {load_before}, after {load_after}: a load above the CPU count means "
        "other processes shared the cores, and OpenBLAS-threaded saxpy (fold) slows down sharply then"
    )
