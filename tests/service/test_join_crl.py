"""`fedlm join --crl`: in secure-aggregation rounds a neighbour whose certificate the federation revoked is refused."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fedlm.cli.main import app
from fedlm.secagg.identity import advert_message
from fedlm.service import certs
from fedlm.service.secagg_worker import join_identity
from fedlm.service.transport import JoinSettings


def settings_for(folder: Path, name: str, crl: Path | None) -> JoinSettings:
    clients = folder / "clients"
    return JoinSettings(server="https://127.0.0.1:1", data=folder, cert=clients / f"{name}.pem", key=clients / f"{name}.key",
                        ca=folder / certs.CA_CERT, crl=crl)


def test_a_revoked_neighbour_is_refused_only_with_the_revocation_list(tmp_path):
    # Prepare: a CA, two clients; bob's certificate revoked
    folder = tmp_path / "certs"
    certs.init_ca(folder)
    for name in ("alice", "bob"):
        certs.issue_client(folder, name)
    certs.revoke(folder, folder / "clients" / "bob.pem")
    bob = join_identity(settings_for(folder, "bob", None)).signer
    message = advert_message(1, "bob", b"x" * 32, b"y" * 32)
    signature = bob.sign(message)
    # Execute: alice checks bob's signed advert without and with the list
    without = join_identity(settings_for(folder, "alice", None)).verify("bob", bob.credential, message, signature)
    with_crl = join_identity(settings_for(folder, "alice", folder / certs.CRL)).verify("bob", bob.credential, message,
                                                                                      signature)
    # Assert
    assert without is True and with_crl is False


def test_a_crl_that_is_not_a_file_is_refused_before_anything_connects(tmp_path):
    # Execute
    result = CliRunner().invoke(app, ["join", "--server", "https://127.0.0.1:1", "--data", str(tmp_path), "--cert", "c.pem",
                                      "--key", "c.key", "--ca", "ca.pem", "--crl", str(tmp_path / "missing.pem")])
    # Assert
    assert result.exit_code == 2 and "is not a file" in " ".join(result.output.split())
