"""`fedlm bench secagg`: one SecAgg+ round in process on random inputs, timed per stage."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.console import Console
from rich.table import Table


console = Console()


def bench_secagg_command(
    clients: int = typer.Option(50, "--clients", "-n", help="Cohort size N (at least 3)."),
    params: int = typer.Option(100_000, "--params", "-p", help="Update length P (float32 values)."),
    neighbours: int = typer.Option(0, "--neighbours", "-k", help="Neighbours per client; 0 = all others (SecAgg)."),
    dropout: float = typer.Option(0.0, "--dropout", help="Share of clients that drop after sharing keys."),
    seed: int = typer.Option(0, "--seed", help="Seeds the inputs, the graph and the dropouts."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Check that the decoded sum equals the plain sum of the quantized inputs, and time each stage."""
    from fedlm.secagg.bench import measure  # here, not at import: `fedlm --help` stays fast

    try:
        report = measure(clients, params, neighbours=neighbours, dropout=dropout, seed=seed)
    except ValueError as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(report))
    else:
        print_report(report)
    if not report.get("exact", True):
        raise typer.Exit(1)


def print_report(report: dict) -> None:
    console.print(
        f"N={report['clients']} P={report['params']:,} k={report['neighbours']} t={report['threshold']} "
        f"dropped={report['dropped']}"
    )
    if report["recovered"]:
        verdict = "[green]equal[/]" if report["exact"] else "[red]DIFFERENT[/]"
        console.print(f"decoded sum vs plain sum of the quantized inputs: {verdict}")
    else:
        console.print(f"[yellow]round failed cleanly:[/] {report['failure']}")
    table = Table(title="seconds per stage")
    for column in ("stage", "client (mean per client)", "server"):
        table.add_column(column, justify="right")
    for stage, client_seconds in report["client_seconds"].items():
        table.add_row(stage, f"{client_seconds:.4f}", f"{report['server_seconds'][stage]:.4f}")
    console.print(table)
    console.print(
        f"round, all clients and server in one process: {report['seconds']:.3f} s; "
        f"server {report['server_total_seconds']:.4f} s vs plain aggregation {report['plain_aggregation_seconds']:.4f} s "
        f"({report['server_overhead']:.1f}x)"
    )
