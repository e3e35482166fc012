"""`fedlm certs`: the private CA behind the service's mutual TLS."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(help="Certificates for mutual TLS: a CA, the server's, clients' (CN = client id), revocation.",
                  no_args_is_help=True)
console = Console()


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/] {escape(str(err))}")
    raise typer.Exit(2) from None


@app.command("init")
def init(
    folder: Path = typer.Argument(Path("certs"), help="Where the CA, server certificate and CRL go."),
    host: list[str] = typer.Option(["localhost", "127.0.0.1"], "--host", help="Names the server certificate is valid for."),
) -> None:
    """Make a CA (ca.pem, ca.key), a server certificate (server.pem, server.key) and an empty CRL (crl.pem)."""
    from fedlm.service.certs import init_ca

    try:
        init_ca(folder, hosts=tuple(host))
    except ValueError as err:
        _fail(err)
    console.print(f"CA and server certificate in {folder}; keep {folder / 'ca.key'} secret")


@app.command("issue")
def issue(
    client_id: str = typer.Argument(..., help="The client id: the certificate's CN (1-64 letters, digits, '.', '_', '-')."),
    folder: Path = typer.Option(Path("certs"), "--dir", help="The CA folder."),
    out: Path = typer.Option(None, "--out", help="Where to write CLIENT_ID.pem and .key (default DIR/clients)."),
) -> None:
    """Issue a client certificate signed by the CA."""
    from fedlm.service.certs import issue_client

    try:
        cert, key = issue_client(folder, client_id, out=out)
    except ValueError as err:
        _fail(err)
    console.print(f"{cert}\n{key}")


@app.command("revoke")
def revoke(
    cert: Path = typer.Argument(..., help="The client certificate (PEM) to revoke."),
    folder: Path = typer.Option(Path("certs"), "--dir", help="The CA folder."),
) -> None:
    """Add a certificate to the CRL; a running server refuses it from its next request on."""
    from fedlm.service.certs import revoke as revoke_cert

    try:
        serial = revoke_cert(folder, cert)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    console.print(f"revoked serial {serial:x}")
