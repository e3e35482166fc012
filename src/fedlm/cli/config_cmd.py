"""`fedlm config`: print the defaults, or check a config file."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.console import Console

from fedlm.config import ConfigError, RunConfig, dump_config, load_config

app = typer.Typer(help="Show the default settings or validate a run config.", no_args_is_help=True)
console = Console()


@app.command("defaults")
def defaults() -> None:
    """Print every setting with its default value, as TOML."""
    print(dump_config(RunConfig()), end="")


@app.command("check")
def check(path: Path = typer.Argument(..., help="A TOML run config.")) -> None:
    """Validate a config file and print it with the defaults filled in."""
    try:
        config = load_config(path)
    except ConfigError as err:
        console.print(f"[red]config error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    print(dump_config(config), end="")
