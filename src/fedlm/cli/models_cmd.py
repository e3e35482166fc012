"""`fedlm models`: prepare (convert and cache) a base model ahead of a run."""

from __future__ import annotations

import logging

import typer
from rich.console import Console

from fedlm.models.base import DEFAULT_MODEL, resolve_model_dir

app = typer.Typer(help="Base models: convert and cache them.", no_args_is_help=True)
console = Console()


@app.command("prepare")
def prepare(name: str = typer.Argument(DEFAULT_MODEL, help="'smollm2', 'tiny', a .gguf file or a local HF dir.")) -> None:
    """Convert the model once (GGUF to safetensors) and print where it is cached."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = resolve_model_dir(name)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(str(path))
