"""SecAgg+ rounds across cohort sizes, update lengths and graph degrees, beside plain aggregation.

    .venv/bin/python benchmarks/secagg.py [--quick] [--json FILE]

For N in {10, 50, 100}, P in {1e5, 1e6} and k in {N - 1 (original SecAgg), ~2 log2 N},
one round in process (every client and the server in turn, as `fedlm bench secagg`
runs it): the whole round's seconds, the mean client's and the server's, and the server's
overhead over plain aggregation of the same vectors measured in the same run (the round
engine validating and folding float32 updates). Targets: N = 50, P = 1e5, k = N - 1
under 2 s per round in total; server overhead below 10x at k ~ 2 log2 N.
"""

from __future__ import annotations

import argparse
import json
import os

# The baseline folds with BLAS saxpy; level-1 BLAS is memory-bound, and OpenBLAS's spinning
# threads slow it tenfold when other processes hold the cores. One thread, set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from fedlm.secagg.bench import measure  # noqa: E402
from fedlm.secagg.graph import logarithmic_degree  # noqa: E402

GRID = [(n, p) for n in (10, 50, 100) for p in (100_000, 1_000_000)]
QUICK = [(10, 100_000), (50, 100_000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only N = 10 and 50 at P = 1e5")
    parser.add_argument("--dropout", type=float, default=0.0, help="share of clients dropping after sharing keys")
    parser.add_argument("--json", help="also write the reports to this file")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    header = f"{'N':>4} {'P':>9} {'k':>4} {'t':>3} {'exact':>5} {'round s':>8} {'client s':>9} {'server s':>9} {'plain s':>8} {'server/plain':>12}"
    print(header)
    reports = []
    for n, p in QUICK if args.quick else GRID:
        for k in sorted({n - 1, logarithmic_degree(n)}, reverse=True):
            r = measure(n, p, neighbours=k, dropout=args.dropout)
            reports.append(r)
            client = sum(r["client_seconds"].values())
            exact = "yes" if r.get("exact") else ("FAIL" if r["recovered"] else "n/a")
            print(f"{n:>4} {p:>9,} {r['neighbours']:>4} {r['threshold']:>3} {exact:>5} {r['seconds']:>8.3f} "
                  f"{client:>9.4f} {r['server_total_seconds']:>9.4f} {r['plain_aggregation_seconds']:>8.4f} "
                  f"{r['server_overhead']:>11.1f}x", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=1)


if __name__ == "__main__":
    main()
