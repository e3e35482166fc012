"""`fedlm bench sim`: seconds per round and peak memory of the simulator on a trivial client workload, or
(`--policy fedbuff|both`) the server's own cost per update under FedBuff beside today's synchronous fold."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.console import Console
from rich.table import Table

from fedlm.config import ConfigError, SimulationSettings
from fedlm.server.policy_settings import PolicySettings

console = Console()
BENCH_POLICIES = ("sync", "fedbuff", "both")
POLICY_DEFAULTS = PolicySettings()


def bench_sim_command(
    clients: int = typer.Option(100, "--clients", "-n", min=1, help="Clients N, every one in every round."),
    params: int = typer.Option(1_000_000, "--params", "-p", min=1, help="Update length P (float32 values)."),
    rounds: int = typer.Option(5, "--rounds", "-r", min=1,
                               help="Measured rounds after a warm-up (fedbuff/both: passes of N updates per path)."),
    executor: str = typer.Option("serial", "--executor", help="simulation.executor: 'serial', 'processes' or 'ray'."),
    workers: int = typer.Option(0, "--workers", min=0, help="simulation.workers (processes / ray); 0 = one per core."),
    address: str = typer.Option("", "--address", help="simulation.address (ray): '' local, 'auto' or a URL."),
    policy: str = typer.Option("sync", "--policy",
                               help="'sync': the simulator's round (as before). 'fedbuff': the FedBuff server's cost "
                                    "per update. 'both': FedBuff beside today's synchronous fold, same updates, "
                                    "same run."),
    buffer_size: int | None = typer.Option(None, "--buffer-size", "-k",
                                           help="fedbuff/both: K, a server step every K updates (default N: as many "
                                                "steps as the synchronous round)."),
    max_staleness: int | None = typer.Option(None, "--max-staleness",
                                             help=f"fedbuff/both: staleness drawn uniformly in [0, this] "
                                                  f"(default {POLICY_DEFAULTS.max_staleness})."),
    staleness_weight: str | None = typer.Option(None, "--staleness-weight",
                                                help="fedbuff/both: 'sqrt' (1/sqrt(1+s), default) or 'constant'."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object instead of a table."),
) -> None:
    """Seconds per round and peak memory of the simulator on a trivial client workload.

    Each client returns the values it received plus a constant, through the real round
    engine, update pipeline and executor. Prints seconds per round (median, min) after a
    warm-up round, the warm-up round's seconds, a memory-traffic floor and peak memory.

    With --policy fedbuff or both: the server functions alone on N synthetic updates of P
    values, microseconds per update (median over passes) of FedBuff's fold with staleness
    weights and a step every K updates, beside today's synchronous fold and their ratio.
    """
    if policy not in BENCH_POLICIES:
        fail(f"--policy must be one of {', '.join(BENCH_POLICIES)}; got {policy!r}")
    if policy == "sync":
        if (buffer_size, max_staleness, staleness_weight) != (None, None, None):
            fail("--buffer-size, --max-staleness and --staleness-weight apply to --policy fedbuff or both")
        run_simulator_bench(clients, params, rounds, executor, workers, address, as_json)
        return
    if (executor, workers, address) != ("serial", 0, ""):
        fail(f"--executor, --workers and --address apply to --policy sync: --policy {policy} calls the server "
             "functions in this process")
    try:
        settings = PolicySettings(
            kind="fedbuff", buffer_size=clients if buffer_size is None else buffer_size,
            max_staleness=POLICY_DEFAULTS.max_staleness if max_staleness is None else max_staleness,
            staleness_weight=staleness_weight or POLICY_DEFAULTS.staleness_weight,
        )
    except ConfigError as err:
        fail(str(err))
    run_policy_bench(clients, params, rounds, settings, compare_sync=policy == "both", as_json=as_json)


def fail(message: str) -> None:
    console.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(2)


def run_simulator_bench(
    clients: int, params: int, rounds: int, executor: str, workers: int, address: str, as_json: bool
) -> None:
    try:
        settings = SimulationSettings(executor=executor, workers=workers, address=address)
    except ConfigError as err:
        fail(str(err))
    from fedlm.sim.bench import bench_rounds  # the engine (and torch) only once the flags are good

    try:
        result = bench_rounds(clients=clients, params=params, rounds=rounds, settings=settings).as_dict()
    except ValueError as err:
        fail(str(err))
    if as_json:
        print(json.dumps(result))
    else:
        print_result(result)


def run_policy_bench(
    clients: int, params: int, rounds: int, settings: PolicySettings, *, compare_sync: bool, as_json: bool
) -> None:
    from fedlm.server.buffered import buffer_policy
    from fedlm.sim.bench import bench_policies

    try:
        result = bench_policies(clients=clients, params=params, repetitions=rounds, policy=buffer_policy(settings),
                                compare_sync=compare_sync).as_dict()
    except ValueError as err:
        fail(str(err))
    if as_json:
        print(json.dumps(result))
    else:
        print_policy_result(result)


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


def print_policy_result(result: dict) -> None:
    table = Table(title=f"server cost per update: N={result['clients']:,} updates, P={result['params']:,} floats")
    for column in ("path", "µs/update", "min", "CPU µs/update", "steps/pass", "folded/pass"):
        table.add_column(column, justify="right")
    if result["sync_us_per_update"] is not None:
        table.add_row("sync", f"{result['sync_us_per_update']:.2f}", f"{result['sync_us_per_update_min']:.2f}",
                      f"{result['sync_cpu_us_per_update']:.2f}", str(result["sync_server_steps"]),
                      str(result["sync_updates_folded"]))
    table.add_row(f"fedbuff K={result['buffer_size']:,}", f"{result['fedbuff_us_per_update']:.2f}",
                  f"{result['fedbuff_us_per_update_min']:.2f}", f"{result['fedbuff_cpu_us_per_update']:.2f}",
                  str(result["fedbuff_server_steps"]),
                  str(result["fedbuff_updates_folded"]))
    console.print(table)
    if result["ratio"] is not None:
        console.print(f"fedbuff / sync: [bold]{result['ratio']:.3f}[/] wall clock (within one repetition "
                      f"{result['ratio_low']:.3f} to {result['ratio_high']:.3f}), [bold]{result['cpu_ratio']:.3f}[/] "
                      f"CPU time ({result['cpu_ratio_low']:.3f} to {result['cpu_ratio_high']:.3f})")
        console.print(f"sync / sync (the same path measured twice, the noise): [bold]{result['control_cpu_ratio']:.3f}[/] "
                      f"CPU time ({result['control_cpu_ratio_low']:.3f} to {result['control_cpu_ratio_high']:.3f}); "
                      f"FedBuff's ratio is [bold]{'inside' if result['within_noise'] else 'outside'}[/] that band: "
                      f"{'no measurable' if result['within_noise'] else 'a measurable'} per-update cost")
    console.print(
        "Medians over passes. sync: open_round, accept_update each, close_round. fedbuff: accept_stale each (a "
        "server step every K). CPU: this process's CPU time, which other jobs on the machine barely move. "
        f"{result['repetitions']} measured passes per path after one warm-up, interleaved; staleness uniform in "
        f"[0, {result['max_staleness']}] (mean {result['mean_staleness']:.2f}), weight {result['staleness_weight']}. "
        f"Memory floor: {result['floor_us_per_update']:.2f} µs per update (numpy reading and writing one vector of P)."
    )
