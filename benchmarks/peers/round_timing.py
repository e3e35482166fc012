"""Arguments and result line shared by the peer workloads (Flower, pfl) of the peer benchmark.

Each workload runs inside its own virtual environment, so this module uses only the
standard library: the workload scripts import it from their own folder (benchmarks/peers/
is on sys.path when a script there runs), and the runner imports it to read their output.

The trivial workload (issue 9): every client receives the global vector of P float32
values and returns it plus CONSTANT; all N clients take part in every round; the server
averages (FedAvg), so after R rounds from zeros every global value is R * CONSTANT.
Round 1 is the warm-up: it is reported on its own as first_round_seconds, and the median
and min are taken over rounds 2..R.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

CONSTANT = 1.0
RESULT_PREFIX = "PEER_RESULT "


def parse_workload_args(
    description: str, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """Parse --clients, --params, --rounds (at least 2: one warm-up, one timed) and extras."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--clients", type=int, required=True, help="N: clients, all in every round")
    parser.add_argument("--params", type=int, required=True, help="P: float32 values in the model")
    parser.add_argument("--rounds", type=int, default=5, help="rounds including 1 warm-up (>= 2)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    if args.clients < 1 or args.params < 1:
        parser.error("--clients and --params must be at least 1")
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (one warm-up round and one timed round)")
    return args


def summarize(round_seconds: list[float]) -> dict[str, float | int]:
    """Median and min seconds per round after the warm-up round, and the warm-up itself."""
    if len(round_seconds) < 2:
        raise ValueError(f"need at least 2 round times, got {len(round_seconds)}")
    timed = round_seconds[1:]
    return {
        "seconds_per_round_median": statistics.median(timed),
        "seconds_per_round_min": min(timed),
        "first_round_seconds": round_seconds[0],
        "timed_rounds": len(timed),
    }


def check_global(values_min: float, values_max: float, rounds: int) -> None:
    """Fail loudly unless every global value is rounds * CONSTANT (the workload really ran)."""
    expected = rounds * CONSTANT
    if abs(values_min - expected) > 1e-4 * expected or abs(values_max - expected) > 1e-4 * expected:
        raise SystemExit(
            f"wrong global vector after {rounds} rounds: min {values_min}, max {values_max}, "
            f"expected every value = {expected}"
        )


def emit(result: dict[str, object]) -> None:
    """Print the result as one prefixed JSON line on stdout (frameworks print there too)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def read_result(stdout: str) -> dict[str, object] | None:
    """The last result line a workload printed, or None when it printed none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return None
