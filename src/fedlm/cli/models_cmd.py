"""`fedlm models`: prepare (convert and cache) a base model; list, export and roll back the registry's versions."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.markup import escape
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
        console.print(f"[red]error:[/] {escape(str(err))}")
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
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    for v in registry_versions(store):
        loss = v["metrics"].get("eval_loss")
        marker = "*" if v["production"] else " "
        console.print(f"{marker} v{v['version']:<4} round {v['round']:<4} {v['status']:<8} "
                      f"eval_loss {'-' if loss is None else f'{loss:.4f}'}  accepted {v['metrics'].get('accepted', '-')}")


@app.command("export")
def export(
    version: int = typer.Argument(..., help="The model version (`fedlm models list` shows them)."),
    directory: Path = typer.Argument(..., help="Where to write it (created; must not hold files unless --overwrite)."),
    config: Path = SERVER_CONFIG,
    merged: bool = typer.Option(False, "--merged", help="Write the base model with the adapter merged in "
                                "(loads with transformers alone) instead of the adapter."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DIRECTORY if it exists and is not empty."),
) -> None:
    """Write model VERSION as a PEFT adapter directory with a model card (or, with --merged, a merged model)."""
    from fedlm.cli.export_cmd import fedlm_version
    from fedlm.service.registry import export_version

    try:
        settings, store, blobs = _registry(config)
        if merged:
            console.print(f"merging v{version} into its base model and saving the full model to {directory} ...")
        export_version(store, blobs, settings.run_config(), version, directory, merged=merged, overwrite=overwrite,
                       tool_version=fedlm_version())
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
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
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    console.print(f"production is now v{version}")
