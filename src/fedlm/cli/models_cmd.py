"""`fedlm models`: prepare (convert and cache) a base model; list, export and roll back the registry's versions."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

from fedlm.config import ModelSettings

app = typer.Typer(help="Base models (prepare) and the coordinator's model registry (list, export, rollback).", no_args_is_help=True)
console = Console()


@app.command("prepare")
def prepare(name: str = typer.Argument(ModelSettings().name, help="'smollm2', 'tiny', a .gguf file or a local HF dir.")) -> None:
    """Convert the model once (GGUF to safetensors) and print where it is cached."""
    from fedlm.models.base import resolve_model_dir  # torch and transformers load only when used

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = resolve_model_dir(name)
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(str(path))


def _registry(config: Path):
    from fedlm.service.blobs import BlobStore
    from fedlm.service.settings import load_settings
    from fedlm.service.store import Store

    settings = load_settings(config)
    return settings, Store(settings.database_url), BlobStore(settings.data_dir / "blobs")


SERVER_CONFIG = typer.Option(Path("server.toml"), "--config", help="The coordinator's server.toml.")


@app.command("list")
def list_versions(config: Path = SERVER_CONFIG) -> None:
    """Every model version the coordinator committed, its metrics and which one is in production."""
    from fedlm.service.registry import list_versions as registry_versions

    try:
        _, store, _ = _registry(config)
    except ValueError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    for v in registry_versions(store):
        loss = v["metrics"].get("eval_loss")
        marker = "*" if v["production"] else " "
        console.print(f"{marker} v{v['version']:<4} round {v['round']:<4} {v['status']:<8} "
                      f"eval_loss {'-' if loss is None else f'{loss:.4f}'}  accepted {v['metrics'].get('accepted', '-')}")


@app.command("export")
def export(version: int = typer.Argument(...), directory: Path = typer.Argument(...), config: Path = SERVER_CONFIG) -> None:
    """Write model VERSION as a PEFT adapter directory."""
    from fedlm.service.registry import export_version

    try:
        settings, store, blobs = _registry(config)
        export_version(store, blobs, settings.run_config(), version, directory)
    except ValueError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(str(directory))


@app.command("rollback")
def rollback(version: int = typer.Argument(...), config: Path = SERVER_CONFIG) -> None:
    """Point production at VERSION (training continues from the newest version)."""
    from fedlm.service.registry import rollback as registry_rollback

    try:
        _, store, _ = _registry(config)
        registry_rollback(store, version)
    except ValueError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(f"production is now v{version}")
