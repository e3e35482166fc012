"""Server-side aggregation throughput of fedlm's round engine beside np.copyto bandwidth.

What it measures
    For each case (N clients x P parameters; by default N=100 x P=1M and N=1000 x P=100k,
    400 MB of float32 updates each), the server side of one round as the round engine
    runs it: `initial_state` (untimed), `open_round(state, cohort, pipeline)`, then
    `accept_update` for each of the N updates (client ids sorted, num_samples varied), then
    `close_round`. The N update vectors are distinct rows of one [N, P] float32 array drawn
    once from a seeded numpy Generator, as is the global vector.

    Reported per case, each as the median and the min over the repeats:
      - np.copyto baseline: each of the N vectors copied into one preallocated P-vector;
        bandwidth = N * P * 4 bytes of update data / seconds.
      - fold alone: `fedlm.aggregation.mean.fold` (BLAS saxpy) of the same N vectors into
        one accumulator, with the same weights: the arithmetic of the sum, nothing else.
      - check_update alone (one BLAS dot per update catches NaN, inf and oversized
        values), so that the validation's share of accept_update is visible.
      - fedavg: open_round, the N accept_update calls, close_round. The "fold bandwidth" of
        the issue is N * P * 4 bytes / the time of the N accept_update calls; the "server
        step" is accept (all N) + close_round.
      - the same round with the adaptive server optimizers (adam, yogi) and with the robust
        aggregators (median, trimmed_mean 0.1, krum f=10, multi_krum f=10 selecting N - f),
        which keep every update in an [N, P] stack and aggregate it in close_round: what
        robustness costs.

The baseline
    np.copyto(dst, update) for each update, dst one preallocated float32 vector of size P:
    memcpy bandwidth on this machine, measured in the same process and interleaved with
    the fedlm measurements (the order of the measurements is reversed every other repeat
    to cancel drift). fold reads each update once and reads and writes one P-vector, the
    same memory traffic pattern as this copy. np.copyto runs on one thread, while the
    saxpy inside fold may use OpenBLAS's threads (left at their default), so fold alone
    can beat the baseline on a machine with more than one core; when other processes keep
    the cores busy, that threaded saxpy slows down far more than the copy (seen: 10x to
    100x on 2 cores), so the report prints the load average before and after the run.

Targets (from the issue)
    - accept_update bandwidth (the sum/mean as the round engine runs it) >= 0.5 x copyto.
    - the whole server step (accept of all N + close_round) for N=100 x P=1M < 0.2 s.

Checks
    The fedavg round's new global must equal global + (fold-alone sum) / (sum of weights)
    exactly, and agree with a float64 weighted mean on the first columns; the script
    exits 1 if not.

How to run
    python benchmarks/aggregation.py                      # both cases, about a minute on 2 idle cores
    python benchmarks/aggregation.py --cases 100x1M       # one case
    python benchmarks/aggregation.py --quick              # small sizes, a few seconds (smoke check)
    python benchmarks/aggregation.py --json               # one JSON object on stdout, tables on stderr
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import scipy

from fedlm.aggregation.mean import fold
from fedlm.aggregation.server_opt import ServerOptimizer
from fedlm.core.types import Update
from fedlm.server.rounds import accept_update, check_update, close_round, initial_state, open_round
from fedlm.updates.pipeline import Pipeline, Stage, Step, fedavg_pipeline, make_pipeline

from aggregation_report import (  # benchmarks/ is the script's folder
    BANDWIDTH_TARGET,
    REFERENCE_COLUMNS,
    STEP_CASE,
    STEP_TARGET_S,
    header,
    load_average,
    table,
)

SEED = 0
# name -> (N, P) for a full run, (N, P) for --quick
CASES = {
    "100x1M": ((100, 1_000_000), (24, 40_000)),
    "1000x100k": ((1000, 100_000), (240, 4_000)),
}
NUM_BYZANTINE = 10
TRIM_FRACTION = 0.1
ADAPTIVE_LR = 1e-2
REFERENCE_RTOL = 1e-5


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), help="cases to run (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each measurement (default 5)")
    parser.add_argument("--robust-repeats", type=int, default=None,
                        help="repeats of the robust aggregators (default: as --repeats; lower it if they are slow)")
    parser.add_argument("--no-robust", action="store_true", help="skip the robust aggregators")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke check (targets not judged)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (the tables go to stderr)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.robust_repeats is None:
        args.robust_repeats = args.repeats
    if args.robust_repeats < 1:
        parser.error("--robust-repeats must be >= 1")
    return args


# ---------------------------------------------------------------- pipelines


def pipelines(include_robust: bool) -> dict[str, tuple[Pipeline, bool]]:
    """name -> (pipeline, is_robust). fedavg first: its numbers are the headline."""
    sgd = ServerOptimizer("sgd", lr=1.0)
    mean = (Step("mean", Stage.AGGREGATE),)
    result = {
        "fedavg": (fedavg_pipeline(), False),
        "adam": (make_pipeline(mean, ServerOptimizer("adam", lr=ADAPTIVE_LR)), False),
        "yogi": (make_pipeline(mean, ServerOptimizer("yogi", lr=ADAPTIVE_LR)), False),
    }
    if include_robust:  # the params as fedlm.updates.build.aggregator_step writes them
        robust_params = {
            "median": (),
            "trimmed_mean": (("trim_fraction", TRIM_FRACTION),),
            "krum": (("num_byzantine", NUM_BYZANTINE),),
            "multi_krum": (("num_byzantine", NUM_BYZANTINE), ("num_selected", 0)),  # 0: N - f
        }
        for name, params in robust_params.items():
            step = Step(name, Stage.AGGREGATE, summable=False, params=params)
            result[name] = (make_pipeline((step,), sgd), True)
    return result


# ---------------------------------------------------------------- timed pieces


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_copyto(rows: np.ndarray, dst: np.ndarray) -> float:
    def go() -> None:
        for row in rows:
            np.copyto(dst, row)

    return timed(go)


def time_fold(rows: np.ndarray, weights: list[float], total: np.ndarray) -> float:
    total.fill(0.0)

    def go() -> None:
        for row, weight in zip(rows, weights):
            fold(total, row, weight)

    return timed(go)


def time_check(state, cohort, updates: list[Update]) -> float:
    rnd = open_round(state, cohort, fedavg_pipeline())  # check_update leaves the round as it is

    def go() -> None:
        for update in updates:
            check_update(rnd, update)

    return timed(go)


def time_round(global_vector: np.ndarray, pipeline: Pipeline, cohort, updates: list[Update]) -> tuple[dict, np.ndarray]:
    """One round through the engine: seconds of open, accept (all N), close; and the new global."""
    state = initial_state(global_vector, pipeline)
    gc.collect()
    t0 = time.perf_counter()
    rnd = open_round(state, cohort, pipeline)
    t1 = time.perf_counter()
    for update in updates:
        accept_update(rnd, update)
    t2 = time.perf_counter()
    new_state, outcome = close_round(state, rnd)
    t3 = time.perf_counter()
    if not outcome.committed or len(outcome.accepted) != len(updates):
        raise RuntimeError(f"the round accepted {len(outcome.accepted)} of {len(updates)} updates")
    del rnd
    return {"open": t1 - t0, "accept": t2 - t1, "close": t3 - t2, "step": t3 - t1}, new_state.global_vector


# ---------------------------------------------------------------- one case


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "all": values}


def run_case(name: str, n: int, p: int, args: argparse.Namespace) -> dict:
    nbytes = n * p * 4
    log(f"[{name}] generating {n} x {p} float32 updates ({nbytes / 1e6:.0f} MB) ...")
    rng = np.random.default_rng(SEED)
    rows = rng.standard_normal((n, p), dtype=np.float32)
    rows *= np.float32(0.01)  # the scale of a LoRA delta
    global_vector = rng.standard_normal(p, dtype=np.float32)
    global_vector *= np.float32(0.1)
    samples = [int(s) for s in rng.integers(1, 1000, size=n)]
    cohort = tuple(sorted(f"client-{i:05d}" for i in range(n)))
    updates = [
        Update(round=1, version=0, client_id=cid, num_samples=samples[i], vector=rows[i], metrics={"loss": 1.0})
        for i, cid in enumerate(cohort)
    ]
    weights = [float(s) for s in samples]
    dst = np.empty(p, np.float32)
    total = np.zeros(p, np.float32)
    fed_state = initial_state(global_vector)
    variants = pipelines(include_robust=not args.no_robust)

    # The measurements of one repeat, in order; reversed every other repeat.
    pieces: dict[str, Callable[[], object]] = {
        "copyto": lambda: time_copyto(rows, dst),
        "fold": lambda: time_fold(rows, weights, total),
        "check_update": lambda: time_check(fed_state, cohort, updates),
    }
    for vname, (pipeline, _) in variants.items():
        pieces[vname] = (lambda pl=pipeline: time_round(global_vector, pl, cohort, updates))

    log(f"[{name}] warm-up ...")
    for key in ("copyto", "fold", "check_update", "fedavg"):
        pieces[key]()

    # Correctness: the engine's FedAvg equals the fold-alone sum over the weight sum, exactly.
    time_fold(rows, weights, total)
    _, fedavg_global = time_round(global_vector, variants["fedavg"][0], cohort, updates)
    weight_sum = float(sum(weights))
    expected = (total / np.float32(weight_sum)) * np.float32(1.0) + global_vector
    exact = bool(np.array_equal(fedavg_global, expected))
    cols = slice(0, min(p, REFERENCE_COLUMNS))
    reference = global_vector[cols] + (np.asarray(weights) @ rows[:, cols].astype(np.float64)) / weight_sum
    close = bool(np.allclose(fedavg_global[cols], reference, rtol=REFERENCE_RTOL, atol=1e-7))
    del fedavg_global, expected

    measured: dict[str, list] = {key: [] for key in pieces}
    for repeat in range(args.repeats):
        order = [k for k, (_, is_robust) in variants.items() if not is_robust or repeat < args.robust_repeats]
        order = ["copyto", "fold", "check_update", *order]
        if repeat % 2:
            order.reverse()
        for key in order:
            result = pieces[key]()
            measured[key].append(result[0] if isinstance(result, tuple) else result)
        copy_s, accept_s = measured["copyto"][-1], measured["fedavg"][-1]["accept"]
        log(
            f"[{name}] repeat {repeat + 1}/{args.repeats}: copyto {copy_s:.4f} s ({nbytes / copy_s / 1e9:.1f} GB/s), "
            f"fedavg accept {accept_s:.4f} s ({nbytes / accept_s / 1e9:.1f} GB/s), "
            f"step {measured['fedavg'][-1]['step']:.4f} s"
        )

    passes = {}
    for key in ("copyto", "fold", "check_update"):
        s = summary(measured[key])
        s["gb_per_s"] = nbytes / s["median"] / 1e9
        passes[key] = s
    copy_bw = passes["copyto"]["gb_per_s"]
    for s in passes.values():
        s["vs_copyto"] = s["gb_per_s"] / copy_bw

    rounds = {}
    for vname, (pipeline, is_robust) in variants.items():
        runs = measured[vname]
        entry = {part: summary([r[part] for r in runs]) for part in ("open", "accept", "close", "step")}
        entry["robust"] = is_robust
        entry["repeats"] = len(runs)
        entry["pipeline"] = pipeline.describe()
        entry["accept_gb_per_s"] = nbytes / entry["accept"]["median"] / 1e9
        entry["accept_vs_copyto"] = entry["accept_gb_per_s"] / copy_bw
        rounds[vname] = entry

    paired = [measured["copyto"][i] / measured["fedavg"][i]["accept"] for i in range(args.repeats)]
    fedavg = rounds["fedavg"]
    check_share = passes["check_update"]["median"] / fedavg["accept"]["median"]
    result = {
        "case": name,
        "n": n,
        "p": p,
        "update_bytes": nbytes,
        "passes": passes,
        "rounds": rounds,
        "copyto_gb_per_s": copy_bw,
        "accept_gb_per_s": fedavg["accept_gb_per_s"],
        "accept_vs_copyto": fedavg["accept_vs_copyto"],
        "accept_vs_copyto_paired_median": statistics.median(paired),
        "fold_vs_copyto": passes["fold"]["vs_copyto"],
        "check_share_of_accept": check_share,
        # what accept_update spends beyond check_update and fold: per-call Python, the metrics dict, ingress
        "accept_other_s": fedavg["accept"]["median"] - passes["check_update"]["median"] - passes["fold"]["median"],
        "fedavg_step_s": fedavg["step"]["median"],
        "fedavg_step_min_s": fedavg["step"]["min"],
        "bandwidth_target_met": None if args.quick else fedavg["accept_vs_copyto"] >= BANDWIDTH_TARGET,
        "step_target_met": None if args.quick or name != STEP_CASE else fedavg["step"]["median"] < STEP_TARGET_S,
        "check_exact": exact,
        "check_float64": close,
    }
    del rows, updates
    gc.collect()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gc.collect()
    gc.freeze()  # the imported modules' objects (torch's among them) stay out of the collections before each timing
    load_before = load_average()
    start = time.perf_counter()
    results = []
    for name in args.cases:
        full, quick = CASES[name]
        n, p = quick if args.quick else full
        results.append(run_case(name, n, p, args))
    elapsed = time.perf_counter() - start
    load_after = load_average()
    out = sys.stderr if args.json else sys.stdout
    print(header(load_before, load_after), file=out)
    for r in results:
        print("", file=out)
        print(table(r, args), file=out)
    print(f"\ntotal {elapsed:.1f} s", file=out)
    if args.json:
        print(json.dumps({
            "benchmark": "aggregation",
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "cpus": os.cpu_count(),
            "quick": args.quick,
            "repeats": args.repeats,
            "robust_repeats": min(args.robust_repeats, args.repeats),
            "targets": {"accept_vs_copyto_min": BANDWIDTH_TARGET, "step_max_s": STEP_TARGET_S, "step_case": STEP_CASE},
            "elapsed_s": elapsed,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "cases": results,
        }))
    ok = all(r["check_exact"] and r["check_float64"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
