"""Service fixtures: a coordinator over a small synthetic global vector, certificates, in-process clients.

The app is the real one; each test client carries a real certificate in the ASGI TLS
extension, exactly as service.tls puts it there under uvicorn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fake_clock import FakeClock  # noqa: F401  (service tests import it from here)
from postgres_db import scratch_database
from fedlm.config import RunConfig, apply_overrides
from fedlm.service import certs
from fedlm.service.app import create_app
from fedlm.service.blobs import BlobStore
from fedlm.service.coordinator import Coordinator
from fedlm.service.settings import RegistrySection, SchedulingSection, SecAggSection
from fedlm.service.store import Store
from fedlm.service.tls import with_tls_extension
from fedlm.privacy.plan import make_privacy_plan
from fedlm.updates.build import build_pipeline
from fedlm.updates.pipeline import fedavg_pipeline

INITIAL = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 4.0], np.float32)
MAX_UPLOAD = 4096


@dataclass
class Service:
    root: Path
    url: str
    clock: FakeClock
    run: RunConfig
    coordinator: Coordinator
    clients: dict[str, TestClient] = field(default_factory=dict)

    def restart(self, **kwargs) -> Coordinator:
        """A fresh coordinator on the same database and blobs: what a restarted process builds."""
        self.coordinator = make_coordinator(self.root, self.url, self.clock, self.run, **kwargs)
        app = make_app(self.coordinator, self.root)
        for name, client in list(self.clients.items()):
            self.clients[name] = TestClient(with_tls_extension(app, client.tls))
        return self.coordinator


DP_POPULATION = 100  # the population a test run's privacy plan assumes


def pipeline_for(run: RunConfig):
    """FedAvg, or the run's own pipeline under secure aggregation (clip -> [noise share] -> mask -> mean -> unmask)
    or with update limits (norm bound -> mean, weights capped)."""
    limited = run.strategy.norm_bound > 0 or run.strategy.max_client_weight > 0
    if not run.secagg.enabled and not limited:
        return fedavg_pipeline()
    plan = make_privacy_plan(run.privacy, run.federation, DP_POPULATION)
    return build_pipeline(run.strategy, run.lora, None, plan, run.compression, run.secagg)


def make_coordinator(root, url, clock, run, *, evaluator=None, margin=0.0, over_selection=0.0, deadline=100.0,
                     on_regression="hold", blobs=None):
    return Coordinator(
        Store(url), BlobStore(root / "blobs") if blobs is None else blobs, run=run, pipeline=pipeline_for(run), initial_global=INITIAL,
        scheduling=SchedulingSection(over_selection=over_selection, deadline_seconds=deadline),
        registry=RegistrySection(canary_margin=margin, on_regression=on_regression), evaluator=evaluator, clock=clock, secagg=SecAggSection(),
    )


def make_app(coordinator, root):
    verifier = certs.ClientVerifier(root / "certs" / certs.CA_CERT, root / "certs" / certs.CRL)
    return create_app(coordinator, verifier, max_upload_bytes=MAX_UPLOAD, population=0)


def client_for(app, cert_path: Path | None) -> TestClient:
    chain = [cert_path.read_text()] if cert_path is not None else []
    tls = {"client_cert_chain": chain, "tls_version": "TLSv1.3", "cipher_suite": None}
    client = TestClient(with_tls_extension(app, tls))
    client.tls = tls
    return client


def build_service(root: Path, url: str, names=("alice", "bob", "carol"), clients_per_round=2, overrides=None, **kwargs) -> Service:
    certs.init_ca(root / "certs")
    run = apply_overrides(RunConfig(), {"model": {"name": "tiny"}, "federation": {"rounds": 3, "clients_per_round": clients_per_round}})
    run = apply_overrides(run, overrides or {})
    clock = FakeClock()
    coordinator = make_coordinator(root, url, clock, run, **kwargs)
    app = make_app(coordinator, root)
    service = Service(root, url, clock, run, coordinator)
    for name in names:
        cert, _ = certs.issue_client(root / "certs", name)
        service.clients[name] = client_for(app, cert)
    service.clients["anonymous"] = client_for(app, None)
    return service


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return build_service(tmp_path, f"sqlite:///{tmp_path / 'fedlm.db'}")


@pytest.fixture
def postgres_url():
    with scratch_database() as url:
        yield url
