"""`fedlm join`: take part in a federated run as one client, over mutual TLS."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


def join_command(
    server: str = typer.Option(..., "--server", help="The coordinator's URL, e.g. https://127.0.0.1:8443; several replicas' URLs comma-separated (a client moves on to the next when one cannot be reached)"),
    data: Path = typer.Option(..., "--data", help="This client's data: a folder of text files (.txt, .md, .jsonl, .csv, .parquet, at any depth; task.kind = causal_lm), or a .jsonl file or a folder of them (instruction)."),
    cert: Path = typer.Option(..., "--cert", help="Client certificate (PEM); its CN is the client id."),
    key: Path = typer.Option(..., "--key", help="The certificate's private key (PEM)."),
    ca: Path = typer.Option(..., "--ca", help="The CA that signed the server's certificate."),
    crl: Path | None = typer.Option(None, "--crl", help="The federation's revocation list (PEM, as `fedlm certs revoke` "
                                    "writes it): in secure-aggregation rounds a neighbour whose certificate it revokes is "
                                    "refused. Without it neighbours are checked against the CA and their dates only."),
    charging: bool = typer.Option(False, "--charging", help="Trait: the device is charging."),
    unmetered: bool = typer.Option(False, "--unmetered", help="Trait: the network is unmetered."),
    free_memory_mb: int = typer.Option(0, "--free-memory-mb", help="Trait: free memory in MB."),
    region: str = typer.Option("", "--region", help="Trait: the client's region."),
    threads: int = typer.Option(1, "--threads", help="torch CPU threads for local training."),
    device: str = typer.Option("", "--device", help="Where this client trains: auto, cpu, cuda, cuda:N or mps (default: the run's model.device)."),
    encoding: str = typer.Option("", "--encoding", help="Text encoding of this client's files, e.g. cp1252 or utf-16 (default: the run's data.encoding)."),
) -> None:
    """Wait for a task, train locally, upload the encoded update; until the run is finished."""
    from fedlm.service.client_worker import CertificateProblem, JoinSettings, ServerRefused, join
    from fedlm.service.scheduling import Traits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    traits = Traits(charging=charging, unmetered=unmetered, free_memory_mb=free_memory_mb, region=region)
    if crl is not None and not crl.is_file():
        console.print(f"[red]error:[/] --crl {escape(str(crl))} is not a file")
        raise typer.Exit(2)
    settings = JoinSettings(server=server, data=data, cert=cert, key=key, ca=ca, traits=traits, threads=threads,
                            device=device, encoding=encoding, crl=crl)
    try:
        sent = join(settings)
    except CertificateProblem as err:
        console.print(f"[red]certificate problem:[/] {escape(str(err))}")
        raise typer.Exit(1) from None
    except (ServerRefused, ValueError, RuntimeError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        raise typer.Exit(1) from None
    console.print(f"run finished; {sent} updates sent")
