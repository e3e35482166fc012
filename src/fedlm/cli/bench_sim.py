"""`fedlm bench sim`: seconds per round and peak memory of the simulator on a trivial client workload."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.console import Console
from rich.table import Table

from fedlm.config import ConfigError, SimulationSettings

console = Console()


def bench_sim_command(
    clients: int = typer.Option(100, "--clients", "-n", min=1, help="Clients N, every one in every round."),
    params: int = typer.Option(1_000_000, "--params", "-p", min=1, help="Update length P (float32 values)."),
    rounds: int = typer.Option(5, "--rounds", "-r", min=1, help="Measured rounds, after one warm-up round."),
    executor: str = typer.Option("serial", "--executor", help="simulation.executor: 'serial', 'processes' or 'ray'."),
    workers: int = typer.Option(0, "--workers", min=0, help="simulation.workers (processes / ray); 0 = one per core."),
    address: str = typer.Option("", "--address", help="simulation.address (ray): '' local, 'auto' or a URL."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object instead of a table."),
) -> None:
    """Seconds per round and peak memory of the simulator on a trivial client workload.

    Each client returns the values it received plus a constant, through the real round
    engine, update pipeline and executor. Prints seconds per round (median, min) after a
    warm-up round, the warm-up round's seconds, a memory-traffic floor and peak memory.
    """
    try:
        settings = SimulationSettings(executor=executor, workers=workers, address=address)
    except ConfigError as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    from fedlm.sim.bench import bench_rounds  # the engine (and torch) only once the flags are good

    try:
        result = bench_rounds(clients=clients, params=params, rounds=rounds, settings=settings).as_dict()
    except ValueError as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(result))
    else:
        print_result(result)


def print_result(result: dict) -> None:
    table = Table(title=f"fedlm simulator, trivial workload: N={result['clients']:,} clients, P={result['params']:,} floats")
    for column in ("executor", "workers", "s/round median", "s/round min", "first round s", "memory floor s",
                   "peak RSS MiB", "RSS before MiB"):
        table.add_column(column, justify="right")
    table.add_row(
        result["executor"], str(result["workers"]), f"{result['seconds_per_round_median']:.4f}",
        f"{result['seconds_per_round_min']:.4f}", f"{result['first_round_seconds']:.4f}",
        f"{result['floor_seconds_per_round']:.4f}",
        f"{result['peak_rss_bytes'] / 2**20:.0f}", f"{result['baseline_rss_bytes'] / 2**20:.0f}",
    )
    console.print(table)
    console.print(
        f"{result['rounds']} measured rounds after one warm-up. Memory floor: numpy reading and writing N vectors of P "
        "once, measured in this run. Peak RSS: this process plus its local workers, sampled (shared pages count per process)."
    )
