"""Honest protocol clients for a server, each with its identity key from one in-process directory (a test helper)."""

from __future__ import annotations

from fedlm.secagg.client import SecAggClient
from fedlm.secagg.identity import Directory, make_directory
from fedlm.secagg.server import SecAggServer


def honest_clients(server: SecAggServer, directory: Directory | None = None) -> dict[str, SecAggClient]:
    """One SecAggClient per cohort member, signing with `directory`'s keys (default: a fresh directory)."""
    directory = directory or make_directory(server.cohort)
    return {c: SecAggClient(c, server.parameters(c), signer=directory.signers[c], verify=directory.verify)
            for c in server.cohort}
