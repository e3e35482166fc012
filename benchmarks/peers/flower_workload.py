"""The peer benchmark's trivial workload on Flower 1.42's Simulation Engine (Ray backend).

Run inside the Flower virtual environment that benchmarks/peers/run.py creates:
    ~/.cache/fedlm/peer-venvs/flower/bin/python benchmarks/peers/flower_workload.py \
        --clients 100 --params 1000000 --rounds 5 [--client-cpus 1]

How it uses Flower (the Message API of ServerApp / ClientApp, as Flower's docs set up a
simulation):
    - ClientApp: its train function reads the ArrayRecord it received as NumPy arrays,
      adds CONSTANT, and replies with the new ArrayRecord and a MetricRecord
      {"num-examples": 1} (FedAvg's weight).
    - ServerApp: Flower's own FedAvg strategy (flwr.serverapp.strategy.FedAvg) with every
      node in every round (fraction_train = 1, min_train_nodes = min_available_nodes = N)
      and no client-side evaluation (fraction_evaluate = 0), started from a zero vector.
    - flwr.simulation.run_simulation with N SuperNodes on the Ray backend; each ClientApp
      actor asks for --client-cpus CPUs (Flower's default is 2, which on a 2-core machine
      runs one client at a time; 1 lets two run at once). Ray is started for this run alone
      (address "local"): without it, ray.init() joins any cluster that `ray start` left
      on the machine, and Flower's fixed CPU count then makes it fail.
    run_simulation is deprecated in favour of `flwr run` on a project folder, which runs the
    same Simulation Engine behind a local SuperLink; the in-process call keeps the benchmark
    one script and times the same engine.

Timing: FedAvg.start calls evaluate_fn before round 1 and after each round; the time
between consecutive calls is one round (configure, send to N nodes, N ClientApp runs in
Ray actors, receive, aggregate). Ray starts in parallel with the ServerApp, so its start-up
falls into round 1 (first_round_seconds); total_seconds is the whole run_simulation call.

Prints one line `PEER_RESULT {json}` (see round_timing.py) after checking that every global
value is rounds * CONSTANT.
"""

from __future__ import annotations

import argparse
import os
from importlib.metadata import version
import resource
import sys
import time
import traceback

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network here; no usage events
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np  # noqa: E402
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from round_timing import CONSTANT, check_global, emit, parse_workload_args, summarize  # noqa: E402

client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """The trivial local training: return the received parameters plus CONSTANT."""
    received = msg.content["arrays"].to_numpy_ndarrays()
    updated = [array + np.float32(CONSTANT) for array in received]
    content = RecordDict(
        {"arrays": ArrayRecord(updated), "metrics": MetricRecord({"num-examples": 1})}
    )
    return Message(content=content, reply_to=msg)


def make_server_app(args: argparse.Namespace, marks: list[float], final: dict) -> ServerApp:
    """A ServerApp running FedAvg over all N nodes; marks gets a time stamp per round end."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=args.clients,
            min_available_nodes=args.clients,
        )

        def stamp(server_round: int, arrays: ArrayRecord) -> None:
            marks.append(time.perf_counter())

        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord([np.zeros(args.params, dtype=np.float32)]),
            num_rounds=args.rounds,
            evaluate_fn=stamp,
        )
        final["global"] = result.arrays.to_numpy_ndarrays()[0]

    return server_app


def add_client_cpus(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--client-cpus", type=float, default=1.0, help="Ray CPUs per ClientApp actor (Flower: 2)"
    )


def main() -> None:
    args = parse_workload_args(__doc__.splitlines()[0], add_client_cpus)
    client_cpus = args.client_cpus
    marks: list[float] = []
    final: dict = {}
    started = time.perf_counter()
    try:
        run_simulation(
            server_app=make_server_app(args, marks, final),
            client_app=client_app,
            num_supernodes=args.clients,
            backend_config={
                "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
                # "local": a Ray of its own, never a cluster another process started here.
                "init_args": {"address": "local", "num_cpus": os.cpu_count() or 1},
            },
        )
    except Exception:  # noqa: BLE001 - Flower's own threads would keep a crashed run alive
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    finished = time.perf_counter()
    if len(marks) != args.rounds + 1 or "global" not in final:
        raise SystemExit(f"Flower ran {max(len(marks) - 1, 0)} of {args.rounds} rounds")
    check_global(float(final["global"].min()), float(final["global"].max()), args.rounds)
    round_seconds = [later - earlier for earlier, later in zip(marks, marks[1:])]
    emit(
        {
            "framework": "flower",
            "version": f"flwr {version('flwr')}, ray {version('ray')} backend",
            "clients": args.clients,
            "params": args.params,
            "rounds": args.rounds,
            "client_cpus": client_cpus,
            **summarize(round_seconds),
            "total_seconds": finished - started,
            "driver_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
    )


if __name__ == "__main__":
    sys.exit(main())
