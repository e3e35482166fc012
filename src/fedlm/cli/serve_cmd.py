"""`fedlm serve --config server.toml`: the coordinator under uvicorn with mutual TLS."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.markup import escape
from rich.console import Console

console = Console(stderr=True)


def serve_command(config: Path = typer.Option(..., "--config", help="server.toml (see the README's service section).")) -> None:
    """Run the coordinator: REST API under /v1, OpenAPI at /openapi.json, Prometheus at /metrics (all with a client
    certificate but /v1/health). After the last round it says so once and keeps serving the final version until stopped
    (Ctrl-C)."""
    import uvicorn

    from fedlm.config import ConfigError
    from fedlm.service.runtime import build_runtime, uvicorn_config
    from fedlm.service.settings import load_settings
    from fedlm.service.structured_logs import configure_logging

    try:
        settings = load_settings(config)
        configure_logging(settings.server.log_format)
        runtime = build_runtime(settings)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    server, store = settings.server, settings.database_url.split("@")[-1]
    logging.getLogger("fedlm.service").info("fedlm coordinator on https://%s:%d (mTLS), store %s", server.host, server.port,
                                            store, extra={"host": server.host, "port": server.port})
    uvicorn.Server(uvicorn_config(runtime)).run()
