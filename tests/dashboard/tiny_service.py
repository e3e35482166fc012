"""A tiny service run for the dashboard tests: a coordinator over a 6-value global vector, real certificates,
clients that post updates through the real app (TestClient), and the app served over loopback HTTP by uvicorn.

Like tests/service/conftest.py (certificates in the ASGI TLS extension; both take FakeClock from
tests/fake_clock.py), kept here under its own module name so the two folders' conftest modules never
shadow each other.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import uvicorn
from fastapi.testclient import TestClient

from fake_clock import FakeClock
from fedlm.config import RunConfig, apply_overrides
from fedlm.service import certs
from fedlm.service.app import create_app
from fedlm.service.blobs import BlobStore
from fedlm.service.coordinator import Coordinator
from fedlm.service.settings import RegistrySection, SchedulingSection
from fedlm.service.store import Store
from fedlm.service.tls import with_tls_extension
from fedlm.updates import wire
from fedlm.updates.pipeline import fedavg_pipeline

INITIAL = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 4.0], np.float32)
CLIENTS = ("alice", "bob")
OPERATOR = "ops"


@dataclass
class TinyService:
    root: Path
    coordinator: Coordinator
    app: object  # the FastAPI app (app.state.operators is server.operators)
    clients: dict[str, TestClient] = field(default_factory=dict)

    def client(self, name: str | None) -> TestClient:
        """A TestClient presenting `name`'s certificate (none for None), issued on first use."""
        key = name or "(none)"
        if key not in self.clients:
            chain = [] if name is None else [certs.issue_client(self.root / "certs", name)[0].read_text()]
            self.clients[key] = TestClient(with_tls_extension(self.app, tls_of(chain)))
        return self.clients[key]

    def run_round(self, round: int, train_losses: dict[str, float], deltas: dict[str, np.ndarray] | None = None) -> None:
        """Every client checks in, takes round `round`'s task and uploads its delta (default: 0.1 * round in every
        coordinate) with its train loss."""
        for name in train_losses:
            assert self.client(name).post("/v1/clients/register", json={}).status_code == 200
        for name, loss in train_losses.items():
            task = self.client(name).post("/v1/tasks/next", json={}).json()["task"]
            assert task is not None and task["round"] == round, task
            delta = (deltas or {}).get(name, np.full(INITIAL.size, 0.1 * round, np.float32))
            answer = self.client(name).post(
                f"/v1/rounds/{round}/updates", params={"version": task["version"], "num_samples": 1},
                content=wire.serialize_dense(delta), headers={"X-Fedlm-Metrics": f'{{"train_loss": {loss}}}'})
            assert answer.status_code == 200, answer.text


def tls_of(chain: list[str]) -> dict:
    return {"client_cert_chain": chain, "tls_version": "TLSv1.3", "cipher_suite": None}


def build_tiny_service(root: Path, *, operators: tuple[str, ...] = (OPERATOR,), rounds: int = 3, clients_per_round: int = 2,
                       evaluator: Callable[[np.ndarray], float] | None = None, margin: float = 0.0) -> TinyService:
    """The service before its first round; `evaluator` and `margin` are the canary gate's (registry.eval_data's loss)."""
    certs.init_ca(root / "certs")
    run = apply_overrides(RunConfig(), {"model": {"name": "tiny"},
                                        "federation": {"rounds": rounds, "clients_per_round": clients_per_round}})
    coordinator = Coordinator(
        Store(f"sqlite:///{root / 'fedlm.db'}"), BlobStore(root / "blobs"), run=run, pipeline=fedavg_pipeline(),
        initial_global=INITIAL, scheduling=SchedulingSection(deadline_seconds=100.0),
        registry=RegistrySection(canary_margin=margin), evaluator=evaluator, clock=FakeClock(),
    )
    verifier = certs.ClientVerifier(root / "certs" / certs.CA_CERT, root / "certs" / certs.CRL)
    app = create_app(coordinator, verifier, max_upload_bytes=4096, population=0, operators=tuple(operators))
    return TinyService(root, coordinator, app)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served_as(service: TinyService, name: str) -> Iterator[str]:
    """The app over plain HTTP on loopback (uvicorn in a thread), every request carrying `name`'s certificate
    as service.tls puts it in the scope; yields the base URL."""
    cert, _ = certs.issue_client(service.root / "certs", name)
    app = with_tls_extension(service.app, tls_of([cert.read_text()]))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
